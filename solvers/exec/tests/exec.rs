//! The exec solver running real programs: lego's arguments, no shell,
//! output in the error, a timeout that kills the process group.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use certsmith_exec::{Exec, ExecConfig, OUTPUT_EXCERPT};
use certsmith_plugin_api::{
    ChallengeRequest, ChallengeType, DnsTarget, ErrorKind, Presented, Solver,
};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

fn in_ms(secs: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    now + secs * 1000
}

fn request(value: &str) -> ChallengeRequest {
    ChallengeRequest::new(
        ChallengeType::Dns01,
        "example.test",
        "tok-1",
        "tok-1.thumbprint",
        in_ms(30),
    )
    .with_dns(Some(DnsTarget::new(
        "example.test",
        "_acme-challenge",
        "_acme-challenge.example.test",
        value,
        60,
    )))
}

fn solver(path: &Path, mode: &str, timeout_s: u64) -> Exec {
    let mut c = ExecConfig::new(path.display().to_string());
    c.mode = mode.to_owned();
    c.timeout_s = timeout_s;
    Exec::new(c).expect("config")
}

#[tokio::test]
async fn present_and_cleanup_get_legos_arguments_without_a_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("calls");
    let s = script(
        dir.path(),
        "hook.sh",
        &format!(
            "for a in \"$@\"; do printf '[%s]' \"$a\" >> {}; done; echo >> {}",
            log.display(),
            log.display()
        ),
    );
    let e = solver(&s, "", 10);
    // A value a shell would expand is passed as it is.
    let r = request("$(touch pwned);x");
    let p = e.present(&r).await.expect("present");
    e.cleanup(&r, &p).await.expect("cleanup");
    let raw = solver(&s, "RAW", 10);
    raw.present(&r).await.expect("present raw");
    raw.cleanup(&r, &Presented::default())
        .await
        .expect("cleanup raw");
    let calls = std::fs::read_to_string(&log).expect("calls");
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        [
            "[present][_acme-challenge.example.test.][$(touch pwned);x]",
            "[cleanup][_acme-challenge.example.test.][$(touch pwned);x]",
            "[present][--][example.test][tok-1][tok-1.thumbprint]",
            "[cleanup][--][example.test][tok-1][tok-1.thumbprint]",
        ]
    );
    assert!(!Path::new("pwned").exists() && !dir.path().join("pwned").exists());
}

#[tokio::test]
async fn a_failing_program_puts_its_trimmed_output_in_the_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = script(
        dir.path(),
        "fail.sh",
        "i=0; while [ $i -lt 500 ]; do echo \"noise line $i\"; i=$((i+1)); done\necho 'update failed: REFUSED' >&2\nexit 3",
    );
    let err = solver(&s, "", 10)
        .present(&request("v"))
        .await
        .expect_err("fails");
    assert_eq!(err.kind, ErrorKind::Config);
    assert!(err.message.contains("exit code 3"), "{}", err.message);
    assert!(
        err.message.contains("update failed: REFUSED"),
        "{}",
        err.message
    );
    assert!(err.message.contains("run it by hand"), "{}", err.message);
    assert!(
        err.message.len() < OUTPUT_EXCERPT * 2 + 600,
        "bounded: {} bytes",
        err.message.len()
    );
    assert!(!err.message.contains("noise line 0\n"), "{}", err.message);
}

#[tokio::test]
async fn a_missing_or_unexecutable_program_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = solver(&dir.path().join("nope"), "", 5)
        .present(&request("v"))
        .await
        .expect_err("missing");
    assert!(
        err.message.contains("there is no such file"),
        "{}",
        err.message
    );
    assert!(err.message.contains("EXEC_PATH"), "{}", err.message);
    let f = dir.path().join("plain");
    std::fs::write(&f, "echo hi").expect("write");
    let err = solver(&f, "", 5)
        .present(&request("v"))
        .await
        .expect_err("not executable");
    assert!(err.message.contains("chmod +x"), "{}", err.message);
}

#[tokio::test]
async fn a_hung_program_and_its_children_are_killed_at_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("child.pid");
    let s = script(
        dir.path(),
        "hang.sh",
        &format!(
            "echo started\nsleep 300 &\necho $! > {}\nwait",
            pidfile.display()
        ),
    );
    let started = Instant::now();
    let err = solver(&s, "", 1)
        .present(&request("v"))
        .await
        .expect_err("times out");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(err.kind, ErrorKind::Transient);
    assert!(
        err.message.contains("did not finish within 1 s"),
        "{}",
        err.message
    );
    assert!(err.message.contains("started"), "{}", err.message);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid number");
    // The grandchild (sleep) died with the group.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie_or_gone = state.is_empty() || state.split_whitespace().nth(2) == Some("Z");
        if zombie_or_gone {
            break;
        }
        assert!(Instant::now() < deadline, "sleep {pid} still runs: {state}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn the_deadline_bounds_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = script(dir.path(), "slow.sh", "sleep 30");
    let r = request("v").with_deadline_unix_ms(in_ms(1));
    let started = Instant::now();
    let err = solver(&s, "", 60).present(&r).await.expect_err("deadline");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(err.message.contains("was killed"), "{}", err.message);
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_are_sequential_as_in_lego() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("order");
    let s = script(
        dir.path(),
        "slow.sh",
        &format!(
            "echo \"start $3\" >> {l}; sleep 0.3; echo \"end $3\" >> {l}",
            l = log.display()
        ),
    );
    let e = solver(&s, "", 10);
    let (a, b) = (request("a"), request("b"));
    let (ra, rb) = tokio::join!(e.present(&a), e.present(&b));
    ra.expect("a");
    rb.expect("b");
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 4);
    // Each run ends before the next starts.
    assert_eq!(lines[0].replace("start", "end"), lines[1], "{lines:?}");
    assert_eq!(lines[2].replace("start", "end"), lines[3], "{lines:?}");
}
