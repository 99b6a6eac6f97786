//! Progress output as a person sees it: a live status line on a terminal
//! (run under a pseudo-terminal with `script`), plain lines in a pipe.

use std::process::Command;

use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin};

fn issue_cmd(pebble: &Pebble, state: &TempState, domain: &str) -> Vec<String> {
    vec![
        certsmith_bin().display().to_string(),
        "issue".into(),
        "-d".into(),
        domain.into(),
        "--solver".into(),
        "standalone".into(),
        "--solver-opt".into(),
        format!("listen=127.0.0.1:{}", pebble.http_port()),
        "--server".into(),
        pebble.directory_url(),
        "--ca-cert".into(),
        pebble.ca_cert_path().display().to_string(),
        "--agree-tos".into(),
        "--state-dir".into(),
        state.path().display().to_string(),
    ]
}

fn shell_quote(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_terminal_gets_a_live_status_line_and_a_pipe_gets_plain_lines() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let state = TempState::new().expect("state");

    // Under a pseudo-terminal (util-linux/bsdutils `script`).
    let cmd = shell_quote(&issue_cmd(&pebble, &state, "tty.test"));
    let o = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .expect("`script` (package bsdutils) runs the command under a terminal");
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{tty}");
    assert!(tty.contains("\r\x1b[2K"), "no status line redraws: {tty:?}");
    assert!(
        tty.contains("the CA is validating 1 challenge ("),
        "{tty:?}"
    );
    assert!(
        tty.contains("[certsmith] tty.test: saved version 1"),
        "{tty:?}"
    );
    // Milestones stay as lines; the last thing written clears the status.
    assert!(
        tty.trim_end_matches(['\n', '\r']).ends_with("\x1b[2K") || tty.contains("domains:"),
        "{tty:?}"
    );

    // In a pipe: plain lines, no escape codes.
    let args = issue_cmd(&pebble, &state, "pipe.test");
    let o = Command::new(&args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains('\x1b'), "escape codes in a pipe: {err:?}");
    assert!(
        err.contains("[certsmith] pipe.test: the CA is validating 1 challenge\n"),
        "{err}"
    );
}
