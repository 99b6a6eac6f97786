//! What stdout is: a terminal (and how wide), or a pipe or file.
//!
//! Why this module exists: tables for people are aligned to the terminal's
//! width, while a script reading a pipe wants plain tab-separated lines;
//! only the terminal (or `COLUMNS`, which shells export) knows the width.

use std::io::IsTerminal as _;

/// The width of a terminal whose size is unknown.
const FALLBACK_WIDTH: usize = 80;

/// `Some(width)` when stdout is a terminal: `COLUMNS` when it is a positive
/// number, else the terminal's own width, else 80. `None` for a pipe or file.
pub(crate) fn stdout_width() -> Option<usize> {
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    let columns = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|c| *c > 0);
    Some(columns.or_else(ioctl_width).unwrap_or(FALLBACK_WIDTH))
}

/// The width the terminal on stdout reports (`TIOCGWINSZ`), if any.
fn ioctl_width() -> Option<usize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which
    // points at a live, writable `winsize` for the duration of the call; a
    // descriptor that is not a terminal makes it fail with ENOTTY.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}
