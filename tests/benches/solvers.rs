//! How long one wildcard + apex certificate (`*.X` and `X`) takes through
//! each DNS solver plugin, as a user gets it: `certsmith issue` of the
//! built binary from an empty state directory (directory, account, one
//! order with two dns-01 authorizations, propagation checked, cleanup),
//! against a local Pebble whose VA asks the DNS server the plugin's
//! records reach. Real servers where they run here (BIND9 for rfc2136,
//! exec, httpreq and acmedns; PowerDNS for pdns; moto for route53), the
//! harness's stand-ins for the cloud APIs that cannot (cloudflare,
//! digitalocean, hetzner, gcloud, azure), which copy their records into
//! pebble-challtestsrv as the provider's nameservers would serve them.
//!
//! ```text
//! scripts/bench                 # builds release, runs the `issue` bench, then this one
//! cargo bench -p certsmith-tests --bench solvers -- [--runs 3] [--only rfc2136,pdns]
//! ```
//!
//! Columns: `wall` = median of `--runs` issuances, process start to exit;
//! `fastest` = the quickest of them; `API req/cert` = requests the
//! provider's API (or hook) received for the certificate, counted by its
//! stand-in or by a proxy in front of the real server ("-" where there is
//! no API: rfc2136 sends DNS UPDATEs, exec runs a script). Pebble runs
//! with `PEBBLE_VA_NOSLEEP=1`, authorization reuse off and no nonce
//! rejection, as in the `issue` bench. A plugin whose server is not
//! installed, or whose library is not built, gets a line saying how to
//! fix that and the others are measured still. The figures are printed,
//! never asserted (docs/design.md §6); issue 4's target for rfc2136 is
//! printed under the table.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use certsmith_tests::bind::{Bind, ZoneSpec};
use certsmith_tests::catalogue::{self, Provider};
use certsmith_tests::catalogue_a::{self, Setup};
use certsmith_tests::cloudflare::{CloudflareOpts, CloudflareStandIn};
use certsmith_tests::moto::{self, Moto};
use certsmith_tests::standin::CloudOpts;
use certsmith_tests::throttle_proxy::ThrottleProxy;
use certsmith_tests::{ChallTestSrv, Pebble, PebbleOpts, certsmith_bin};

mod common;
use common::{die, flag, median};

/// Issue 4's target for a wildcard + apex certificate through rfc2136.
const TARGET_RFC2136: Duration = Duration::from_secs(1);

/// Every plugin measured, in the order of the table.
const PLUGINS: [&str; 11] = [
    "rfc2136",
    "cloudflare",
    "route53",
    "digitalocean",
    "hetzner",
    "gcloud",
    "azure",
    "exec",
    "httpreq",
    "acmedns",
    "pdns",
];

/// What `--runs` issuances through one plugin took.
struct Measured {
    /// Wall time of each, seconds.
    walls: Vec<f64>,
    /// API requests of each, where they are counted.
    api: Option<Vec<u64>>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = flag(&args, "--runs")
        .unwrap_or("3")
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or_else(|| die("--runs takes a number of runs, at least 1"));
    let only: Option<Vec<&str>> = flag(&args, "--only").map(|s| s.split(',').collect());
    if let Some(unknown) = only.iter().flatten().find(|code| !PLUGINS.contains(code)) {
        die(&format!(
            "--only: no plugin {unknown}; the plugins are {}",
            PLUGINS.join(",")
        ));
    }
    // The setups of catalogue_a start their own Pebble with the harness's
    // default options, which leave these to the environment; every Pebble
    // here inherits them. moto's venv: MOTO_SERVER_BIN (as scripts/test
    // exports it) names its moto_server.
    // SAFETY: nothing else runs yet (no thread has been started), so no
    // other code reads the environment while it is changed.
    unsafe {
        std::env::set_var("PEBBLE_WFE_NONCEREJECT", "0");
        std::env::set_var("PEBBLE_AUTHZREUSE", "0");
        if let Some(venv) = std::env::var_os("MOTO_SERVER_BIN")
            .filter(|_| std::env::var_os("CERTSMITH_TEST_VENV").is_none())
            .and_then(|b| Some(PathBuf::from(b).parent()?.parent()?.to_path_buf()))
        {
            std::env::set_var("CERTSMITH_TEST_VENV", venv);
        }
    }

    let bin = certsmith_bin();
    if !bin.is_file() {
        die(&format!(
            "{} is missing: build first (scripts/bench does: cargo build --release -p certsmith -p certsmith-solver-<code>...)",
            bin.display()
        ));
    }
    let dir = bin.parent().map(Path::to_path_buf).unwrap_or_default();
    let profile = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!();
    println!(
        "dns-01 per plugin: `certsmith issue -d '*.X' -d X` from an empty state, {profile} build, {} cores, median of {runs} run(s)",
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!();
    println!(
        "{:>13} {:>9} {:>9} {:>12}   DNS behind it",
        "plugin", "wall", "fastest", "API req/cert"
    );
    let mut rfc2136_wall = None;
    for code in PLUGINS {
        if only.as_ref().is_some_and(|o| !o.contains(&code)) {
            continue;
        }
        let lib = dir.join(format!(
            "{}certsmith_{code}{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        ));
        if !lib.is_file() {
            println!(
                "{code:>13}   not built: {} is missing (cargo build --release -p certsmith-solver-{code})",
                lib.display()
            );
            continue;
        }
        let (what, got) = measure_plugin(code, runs);
        match got {
            Ok(m) => {
                let wall = median(m.walls.clone());
                if code == "rfc2136" {
                    rfc2136_wall = Some(wall);
                }
                let api = m.api.map_or_else(
                    || "-".to_owned(),
                    |a| format!("{:.0}", median(a.iter().map(|&n| n as f64).collect())),
                );
                println!(
                    "{code:>13} {wall:>7.3} s {:>7.3} s {api:>12}   {what}",
                    m.walls.iter().copied().fold(f64::INFINITY, f64::min),
                );
            }
            Err(e) => println!("{code:>13}   not measured: {e}"),
        }
    }
    if let Some(wall) = rfc2136_wall {
        println!();
        println!(
            "dns-01 wildcard+apex via rfc2136: {wall:.3} s, target < {:.1} s: {}",
            TARGET_RFC2136.as_secs_f64(),
            if wall < TARGET_RFC2136.as_secs_f64() {
                "met"
            } else {
                "MISSED"
            }
        );
    }
}

/// Starts what `code` needs, issues `runs` certificates through it and
/// stops it again. Returns what serves its DNS (for the table) and the
/// figures, or why it could not be measured.
fn measure_plugin(code: &str, runs: usize) -> (&'static str, Result<Measured, String>) {
    let zone = format!("{code}.test");
    match code {
        "rfc2136" => ("BIND9, RFC 2136 UPDATE with TSIG", rfc2136(&zone, runs)),
        "cloudflare" => ("stand-in -> pebble-challtestsrv", cloudflare(&zone, runs)),
        "route53" => ("moto -> pebble-challtestsrv", route53(&zone, runs)),
        "digitalocean" => (
            "stand-in -> pebble-challtestsrv",
            cloud(Provider::DigitalOcean, &zone, runs),
        ),
        "hetzner" => (
            "stand-in -> pebble-challtestsrv",
            cloud(Provider::Hetzner, &zone, runs),
        ),
        "gcloud" => (
            "stand-in -> pebble-challtestsrv",
            cloud(Provider::Gcloud, &zone, runs),
        ),
        "azure" => (
            "stand-in -> pebble-challtestsrv",
            cloud(Provider::Azure, &zone, runs),
        ),
        "exec" => ("BIND9 via lego's nsupdate exec script", exec(&zone, runs)),
        "httpreq" => ("BIND9 via a lego-httpreq hook", httpreq(&zone, runs)),
        "acmedns" => (
            "BIND9 via the acme-dns stand-in, CNAME",
            acmedns(&zone, runs),
        ),
        "pdns" => (
            "PowerDNS (real), through a counting proxy",
            pdns(&zone, runs),
        ),
        _ => ("", Err("unknown plugin".into())),
    }
}

/// `runs` issuances of `*.apex` + `apex`, each from a fresh state
/// directory: `make(state, domains)` builds the command, `count` reads the
/// provider's request counter (if any) before and after each.
fn issue_runs(
    apex: &str,
    runs: usize,
    mut make: impl FnMut(&Path, &[&str]) -> Command,
    count: Option<&dyn Fn() -> u64>,
) -> Result<Measured, String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let wildcard = format!("*.{apex}");
    let mut walls = Vec::new();
    let mut api = Vec::new();
    for run in 0..runs {
        let before = count.map(|c| c());
        let mut cmd = make(&tmp.path().join(format!("state-{run}")), &[&wildcard, apex]);
        let started = Instant::now();
        let out = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("running {:?}: {e}", cmd.get_program()))?;
        let wall = started.elapsed().as_secs_f64();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "`certsmith issue` failed ({}):\n{}",
                out.status,
                tail.join("\n")
            ));
        }
        walls.push(wall);
        if let (Some(c), Some(b)) = (count, before) {
            api.push(c().saturating_sub(b));
        }
    }
    Ok(Measured {
        walls,
        api: count.map(|_| api),
    })
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A Pebble with its own pebble-challtestsrv as the VA's DNS.
fn pebble_with_challtestsrv() -> Result<Pebble, String> {
    Pebble::start(PebbleOpts::default()).map_err(err)
}

/// `certsmith issue` against `pebble`, resolving and checking propagation
/// on `dns`, with the state in `state`.
fn issue_cmd(
    pebble: &Pebble,
    dns: SocketAddr,
    code: &str,
    state: &Path,
    domains: &[&str],
) -> Command {
    let mut cmd = Command::new(certsmith_bin());
    cmd.args(["issue", "-q", "--solver", code, "--agree-tos"]);
    for d in domains {
        cmd.args(["-d", d]);
    }
    let dns = dns.to_string();
    cmd.args(["--server", &pebble.directory_url()])
        .arg("--ca-cert")
        .arg(pebble.ca_cert_path())
        .arg("--state-dir")
        .arg(state)
        .args(["--dns-resolver", &dns, "--propagation-server", &dns])
        .env_remove("CERTSMITH_PLUGIN_PATH");
    cmd
}

fn challtestsrv(pebble: &Pebble) -> Result<&ChallTestSrv, String> {
    pebble
        .challtestsrv()
        .ok_or_else(|| "Pebble started without pebble-challtestsrv".to_owned())
}

/// rfc2136 writing into a BIND9 on loopback, which Pebble's VA also asks.
fn rfc2136(zone: &str, runs: usize) -> Result<Measured, String> {
    let bind = Bind::start(&[ZoneSpec::new(zone)]).map_err(err)?;
    let pebble = Pebble::start(PebbleOpts {
        dns_server: Some(bind.addr()),
        ..PebbleOpts::default()
    })
    .map_err(err)?;
    let server = bind.addr().to_string();
    issue_runs(
        zone,
        runs,
        |state, domains| {
            let mut cmd = issue_cmd(&pebble, bind.addr(), "rfc2136", state, domains);
            cmd.args(["--solver-opt", &format!("server={server}")])
                .args([
                    "--solver-opt",
                    &format!("tsig_key_name={}", bind.tsig_key_name()),
                ])
                .env("RFC2136_TSIG_SECRET", bind.tsig_secret_b64());
            cmd
        },
        None,
    )
}

/// cloudflare through its stand-in (default paging), mirrored into
/// pebble-challtestsrv.
fn cloudflare(zone: &str, runs: usize) -> Result<Measured, String> {
    let pebble = pebble_with_challtestsrv()?;
    let cts = challtestsrv(&pebble)?;
    let cf = CloudflareStandIn::start(CloudflareOpts::default().zones(&[zone]).mirror_to(cts))
        .map_err(err)?;
    let count = || cf.requests().len() as u64;
    issue_runs(
        zone,
        runs,
        |state, domains| {
            let mut cmd = issue_cmd(&pebble, cts.dns_addr(), "cloudflare", state, domains);
            cmd.args(["--solver-opt", &format!("api_base={}", cf.api_base())])
                .env_remove("CLOUDFLARE_API_TOKEN_FILE")
                .env("CLOUDFLARE_API_TOKEN", cf.token());
            cmd
        },
        Some(&count),
    )
}

/// A catalogue cloud provider through its stand-in (default paging),
/// mirrored into pebble-challtestsrv.
fn cloud(provider: Provider, zone: &str, runs: usize) -> Result<Measured, String> {
    let pebble = pebble_with_challtestsrv()?;
    let cts = challtestsrv(&pebble)?;
    let rig = catalogue::start(provider, CloudOpts::default().zones(&[zone]).mirror_to(cts))
        .map_err(err)?;
    let count = || rig.standin.requests().len() as u64;
    issue_runs(
        zone,
        runs,
        |state, domains| {
            let mut cmd = issue_cmd(&pebble, cts.dns_addr(), provider.code(), state, domains);
            for v in provider.env_vars() {
                cmd.env_remove(v).env_remove(format!("{v}_FILE"));
            }
            for (k, v) in &rig.env {
                cmd.env(k, v);
            }
            for (k, v) in &rig.opts {
                cmd.args(["--solver-opt", &format!("{k}={v}")]);
            }
            cmd
        },
        Some(&count),
    )
}

/// A catalogue-A setup's own command, quiet.
fn setup_runs(
    setup: &Setup,
    runs: usize,
    count: Option<&dyn Fn() -> u64>,
) -> Result<Measured, String> {
    issue_runs(
        &setup.zone,
        runs,
        |state, domains| {
            let mut cmd = setup.issue(state, domains);
            cmd.arg("-q");
            cmd
        },
        count,
    )
}

/// exec running lego's nsupdate script into BIND9.
fn exec(zone: &str, runs: usize) -> Result<Measured, String> {
    let setup = catalogue_a::exec_setup(zone).map_err(err)?;
    setup_runs(&setup, runs, None)
}

/// httpreq posting to a lego-httpreq hook that writes into BIND9.
fn httpreq(zone: &str, runs: usize) -> Result<Measured, String> {
    let setup =
        catalogue_a::httpreq_setup(zone, ("certsmith", "bench-hook-password")).map_err(err)?;
    let hook = setup
        .hook
        .as_ref()
        .ok_or_else(|| "the httpreq setup has no hook".to_owned())?;
    let count = || hook.requests().len() as u64;
    setup_runs(&setup, runs, Some(&count))
}

/// acmedns through the acme-dns stand-in, the account registered and the
/// CNAME created beforehand (as an operator does once).
fn acmedns(zone: &str, runs: usize) -> Result<Measured, String> {
    let setup = catalogue_a::acmedns_setup(zone).map_err(err)?;
    catalogue_a::acmedns_delegate(&setup, zone).map_err(err)?;
    let acme = setup
        .acmedns
        .as_ref()
        .ok_or_else(|| "the acmedns setup has no stand-in".to_owned())?;
    let count = || acme.requests().len() as u64;
    setup_runs(&setup, runs, Some(&count))
}

/// pdns against a real PowerDNS, its API reached through a forwarding
/// proxy that counts the requests.
fn pdns(zone: &str, runs: usize) -> Result<Measured, String> {
    let mut setup = catalogue_a::pdns_setup(zone).map_err(err)?;
    let web = setup
        .pdns
        .as_ref()
        .ok_or_else(|| "the pdns setup has no PowerDNS".to_owned())?
        .web_addr();
    let proxy = ThrottleProxy::start(web).map_err(err)?;
    for (k, v) in &mut setup.env {
        if k == "PDNS_API_URL" {
            *v = proxy.url();
        }
    }
    let count = || proxy.requests().len() as u64;
    setup_runs(&setup, runs, Some(&count))
}

/// route53 against moto, through a proxy that, once a change to a record
/// set succeeded, copies the TXT values moto now holds at the changed
/// names into pebble-challtestsrv before it answers: what Route 53's
/// nameservers serve once a change is INSYNC. The proxy counts the
/// requests.
fn route53(zone: &str, runs: usize) -> Result<Measured, String> {
    let server = moto::venv_dir().join("bin").join("moto_server");
    if !server.is_file() {
        return Err(format!(
            "{} is missing: run scripts/test (it installs moto), or `python3 -m venv {1} && {1}/bin/pip install '{2}'` (MOTO_SERVER_BIN or CERTSMITH_TEST_VENV name another venv's)",
            server.display(),
            moto::venv_dir().display(),
            moto::MOTO_REQUIREMENT
        ));
    }
    let moto = Moto::start().map_err(err)?;
    let zone_id = moto.create_zone(zone, false).map_err(err)?;
    let pebble = pebble_with_challtestsrv()?;
    let cts = challtestsrv(&pebble)?;
    let upstream: SocketAddr = moto
        .endpoint_url()
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("moto's proxy address: {e}"))?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("binding the route53 mirror on 127.0.0.1: {e}"))?;
    let addr = listener.local_addr().map_err(err)?;
    let requests = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let mirror = Mirror {
        upstream,
        moto: &moto,
        zone_id: &zone_id,
        cts,
        requests: &requests,
    };
    std::thread::scope(|s| {
        let (mirror, listener, stop) = (&mirror, &listener, &stop);
        s.spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                s.spawn(move || {
                    if let Err(e) = mirror.serve(conn) {
                        eprintln!("bench: route53 mirror: {e}");
                    }
                });
            }
        });
        let count = || requests.load(Ordering::SeqCst);
        let got = issue_runs(
            zone,
            runs,
            |state, domains| {
                let mut cmd = issue_cmd(&pebble, cts.dns_addr(), "route53", state, domains);
                for v in [
                    "AWS_PROFILE",
                    "AWS_SESSION_TOKEN",
                    "AWS_ENDPOINT_URL",
                    "AWS_ENDPOINT_URL_ROUTE_53",
                ] {
                    cmd.env_remove(v);
                }
                cmd.args(["--solver-opt", &format!("endpoint_url=http://{addr}")])
                    .env("AWS_ACCESS_KEY_ID", "testing")
                    .env("AWS_SECRET_ACCESS_KEY", "testing");
                cmd
            },
            Some(&count),
        );
        stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(addr);
        got
    })
}

/// The route53 mirror's shared state.
struct Mirror<'a> {
    /// moto's fault proxy, which closes each connection after its answer.
    upstream: SocketAddr,
    moto: &'a Moto,
    zone_id: &'a str,
    cts: &'a ChallTestSrv,
    requests: &'a AtomicU64,
}

impl Mirror<'_> {
    /// One request: forwarded as it came, its answer returned, the
    /// connection closed (as moto's proxy does).
    fn serve(&self, mut client: TcpStream) -> io::Result<()> {
        let timeout = Some(Duration::from_secs(30));
        client.set_read_timeout(timeout)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = client.read(&mut chunk)?;
            if n == 0 {
                return Ok(()); // closed without a request (the wake-up)
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let n = client.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut up = TcpStream::connect(self.upstream)?;
        up.set_read_timeout(timeout)?;
        up.write_all(&buf)?;
        let mut answer = Vec::new();
        up.read_to_end(&mut answer)?;
        let line = head.lines().next().unwrap_or_default();
        let change = line.starts_with("POST ") && line.contains("/rrset");
        let ok = answer
            .split(|&b| b == b' ')
            .nth(1)
            .is_some_and(|s| s == b"200");
        if change && ok {
            let body = String::from_utf8_lossy(&buf[head_end..]);
            for name in body
                .split("<Name>")
                .skip(1)
                .filter_map(|s| s.split_once("</Name>"))
                .map(|(n, _)| n.trim_end_matches('.'))
            {
                let values = self
                    .moto
                    .txt_values(self.zone_id, name)
                    .map_err(io::Error::other)?;
                self.cts.clear_txt(name).map_err(io::Error::other)?;
                for v in values {
                    self.cts.set_txt(name, &v).map_err(io::Error::other)?;
                }
            }
        }
        client.write_all(&answer)?;
        client.shutdown(Shutdown::Both)
    }
}
