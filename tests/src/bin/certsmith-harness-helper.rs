//! A child process for the harness's own tests: it starts a Pebble (with its
//! pebble-challtestsrv), prints their pids and temp dir, and sleeps, so a test
//! can SIGKILL it and check that the servers die with it (PR_SET_PDEATHSIG)
//! although no destructor ran.

use std::time::Duration;

use certsmith_tests::{ChallTestSrv, Pebble, PebbleOpts};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pebble = Pebble::start(PebbleOpts::default())?;
    let cts = pebble
        .challtestsrv()
        .and_then(ChallTestSrv::pid)
        .ok_or("no challtestsrv pid")?;
    println!(
        "HARNESS-PIDS {} {} {}",
        pebble.pid().ok_or("no pebble pid")?,
        cts,
        pebble.temp_dir().display()
    );
    std::thread::sleep(Duration::from_secs(120));
    Ok(())
}
