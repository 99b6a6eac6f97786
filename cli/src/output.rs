//! Where things are printed: results on stdout (text or JSON), logs and
//! progress on stderr, so that `--output json | jq` always sees clean JSON.

use std::io::Write;

use crate::GlobalArgs;

struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        if metadata.level() > self.level {
            return false;
        }
        if is_ours(metadata.target()) {
            return true;
        }
        match metadata.level() {
            // A dependency's error is an operation failing (a TLS
            // certificate not trusted, a connection refused) whose error
            // certsmith returns and the command prints, with its hint:
            // logged too, it would be said twice. Shown from -v on.
            log::Level::Error => self.level >= log::LevelFilter::Info,
            log::Level::Warn => true,
            // Dependencies' debug chatter (HTTP internals) only at -vvv.
            _ => self.level >= log::LevelFilter::Trace,
        }
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            let mut err = std::io::stderr().lock();
            let _ = if is_ours(record.target()) {
                writeln!(err, "{level}: {}", record.args())
            } else {
                // Say whose it is: the words are not certsmith's.
                let krate = record.target().split("::").next().unwrap_or_default();
                writeln!(err, "{level}: [{krate}] {}", record.args())
            };
        }
    }

    fn flush(&self) {}
}

/// Whether a log target is certsmith's own (the core, the CLI, and plugins
/// through the host, which logs them as `certsmith::plugin`).
fn is_ours(target: &str) -> bool {
    target.starts_with("certsmith")
}

/// Sends `log` records to stderr at the level `-v`/`-q` ask for.
pub(crate) fn init_logging(global: &GlobalArgs) {
    // -q: warnings and errors only.
    let level = if global.quiet {
        log::LevelFilter::Warn
    } else {
        match global.verbose {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            2 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    };
    if log::set_boxed_logger(Box::new(StderrLogger { level })).is_ok() {
        log::set_max_level(level);
    }
}

/// Writes to stdout. When stdout is closed (the reader went away, as
/// `certsmith list | head -1` does), certsmith ends quietly with
/// [`crate::exit::STDOUT_CLOSED`]: results are printed only once the
/// store work is done, so nothing is left half-written.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        stdout_failed(&e);
    }
}

fn stdout_failed(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(i32::from(crate::exit::STDOUT_CLOSED));
    }
    let _ = writeln!(std::io::stderr(), "error: cannot write to stdout: {e}");
    std::process::exit(i32::from(crate::exit::INTERNAL));
}

/// `println!` on stdout through [`write_stdout`].
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// Prints one JSON value as a line on stdout.
pub(crate) fn print_json(value: &serde_json::Value) {
    let line = serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
    write_stdout(format_args!("{line}\n"));
}

/// Prints an error and an optional hint on stderr.
pub(crate) fn print_error(message: &str, hint: Option<&str>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "error: {message}");
    if let Some(h) = hint {
        let _ = writeln!(err, "hint: {h}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(level: log::LevelFilter, target: &str, record: log::Level) -> bool {
        let logger = StderrLogger { level };
        log::Log::enabled(
            &logger,
            &log::Metadata::builder()
                .level(record)
                .target(target)
                .build(),
        )
    }

    #[test]
    fn a_dependency_error_is_left_to_the_error_certsmith_returns() {
        use log::{Level, LevelFilter};
        let dep = "rustls_platform_verifier::verification::others";
        assert!(!shown(LevelFilter::Warn, dep, Level::Error));
        assert!(shown(LevelFilter::Info, dep, Level::Error));
        assert!(shown(LevelFilter::Warn, dep, Level::Warn));
        assert!(!shown(LevelFilter::Debug, dep, Level::Debug));
        assert!(shown(LevelFilter::Trace, dep, Level::Debug));
        assert!(shown(
            LevelFilter::Warn,
            "certsmith_core::dns",
            Level::Error
        ));
        assert!(shown(LevelFilter::Error, "certsmith::plugin", Level::Error));
        assert!(!shown(LevelFilter::Error, "certsmith_core", Level::Warn));
        assert!(shown(LevelFilter::Debug, "certsmith_core", Level::Debug));
    }
}
