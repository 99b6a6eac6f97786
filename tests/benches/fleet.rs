//! A fleet on one PostgreSQL store: W `certsmith daemon` processes (W = 1,
//! 2, 4), each with its own state directory, issue N certificates (default
//! 1,000, one name each, dns-01 through Pebble's challtestsrv) from a local
//! Pebble (`PEBBLE_VA_NOSLEEP=1`, authorization reuse off, no nonce
//! rejection), each daemon with at most `--concurrency` (default 2) orders
//! in flight. (Debian's Pebble 2.4 stalls for good somewhere past a
//! thousand orders when eight or more are in flight at once; the bench
//! says so when nothing has been stored for a minute.) Everything runs on this machine: Pebble, challtestsrv,
//! PostgreSQL and the daemons share its cores.
//!
//! ```text
//! scripts/bench                       # builds release, runs every bench
//! cargo bench -p certsmith-tests --bench fleet -- [--fleet-certs 1000] [--workers 1,2,4] [--concurrency 4]
//! ```
//!
//! Columns: `wall` = from the daemons' start until the store holds every
//! certificate; `certs/s` = N / wall; `queries/cert` = the statements the
//! daemons sent to PostgreSQL (their `certsmith_store_queries_total`, the
//! metrics scrapes included) per certificate; `CPU/cert` = the daemons'
//! user + system CPU per certificate; `peak RSS` = the largest daemon's.

use std::time::{Duration, Instant};

use certsmith_tests::fleet::{self, FleetDaemon};
use certsmith_tests::postgres::Postgres;
use certsmith_tests::{Pebble, PebbleOpts, TempState};

// `median` is for the other benches.
#[allow(dead_code)]
mod common;
use common::{die, flag};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = flag(&args, "--fleet-certs").map_or(1000, |v| {
        v.parse()
            .unwrap_or_else(|_| die("--fleet-certs takes a number"))
    });
    let workers: Vec<usize> = flag(&args, "--workers")
        .unwrap_or("1,2,4")
        .split(',')
        .map(|w| {
            w.trim()
                .parse()
                .unwrap_or_else(|_| die("--workers takes numbers, e.g. 1,2,4"))
        })
        .collect();
    let concurrency: usize = flag(&args, "--concurrency").map_or(2, |v| {
        v.parse()
            .unwrap_or_else(|_| die("--concurrency takes a number"))
    });
    let pg = Postgres::start().unwrap_or_else(|e| die(&format!("{e}")));
    println!(
        "certsmith fleet benchmark: {n} certificates, one PostgreSQL store, W daemons x {concurrency} orders in flight, Pebble (VA_NOSLEEP, no authz reuse), {} cores shared by all",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    println!(
        "{:>7} {:>9} {:>8} {:>13} {:>10} {:>12}",
        "workers", "wall", "certs/s", "queries/cert", "CPU/cert", "peak RSS"
    );
    for (k, &w) in workers.iter().enumerate() {
        let db = format!("bench{k}");
        let url = pg.database(&db).unwrap_or_else(|e| die(&format!("{e}")));
        let pebble = Pebble::start(PebbleOpts {
            nonce_reject_percent: Some(0),
            env: vec![("PEBBLE_AUTHZREUSE".into(), "0".into())],
            ..PebbleOpts::default()
        })
        .unwrap_or_else(|e| die(&format!("{e}")));
        let dir = TempState::new().unwrap_or_else(|e| die(&format!("{e}")));
        let config = fleet::write_config(&pebble, dir.path(), n, concurrency)
            .unwrap_or_else(|e| die(&format!("{e}")));
        let start = Instant::now();
        let mut daemons: Vec<FleetDaemon> = (0..w)
            .map(|i| {
                FleetDaemon::start(&config, &url, &dir.path().join(format!("node-{i}")), &[])
                    .unwrap_or_else(|e| die(&format!("{e}")))
            })
            .collect();
        let (mut last, mut progressed) = (0, Instant::now());
        loop {
            let issued = fleet::issued(&pg, &db).unwrap_or(0);
            if issued >= n {
                break;
            }
            if issued > last {
                (last, progressed) = (issued, Instant::now());
            } else if progressed.elapsed() > Duration::from_secs(60) {
                die(&format!(
                    "{issued} of {n} stored, none for 60 s: Pebble has probably stalled (Debian's Pebble 2.4 does past ~1,000 orders with 8+ in flight); try --concurrency 2 or fewer --fleet-certs. node-0:\n{}",
                    daemons[0].log_tail(10)
                ));
            }
            if start.elapsed() > Duration::from_secs(1800) {
                die(&format!(
                    "{issued} of {n} after 30 min; node-0:\n{}",
                    daemons[0].log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let wall = start.elapsed().as_secs_f64();
        let queries: f64 = daemons
            .iter()
            .map(|d| d.metric("certsmith_store_queries_total").unwrap_or(0.0))
            .sum();
        let usage: Vec<(f64, u64)> = daemons.iter().filter_map(FleetDaemon::usage).collect();
        let cpu: f64 = usage.iter().map(|u| u.0).sum();
        let rss = usage.iter().map(|u| u.1).max().unwrap_or(0);
        for d in &mut daemons {
            d.terminate(Duration::from_secs(30));
        }
        println!(
            "{w:>7} {:>8.1}s {:>8.1} {:>13.1} {:>8.1}ms {:>8.1} MiB",
            wall,
            n as f64 / wall,
            queries / n as f64,
            cpu * 1000.0 / n as f64,
            rss as f64 / 1024.0
        );
    }
}
