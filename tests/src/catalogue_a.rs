//! Ready-made environments for the first half of the solver catalogue
//! (`exec`, `httpreq`, `acmedns`, `pdns`): a Pebble whose VA asks the DNS
//! server the solver writes into, that server, the provider's API or hook,
//! and the `certsmith issue` options and environment that use them. The
//! end-to-end tests (`tests/tests/catalogue_a.rs`) and a benchmark build on
//! the same functions, so both measure what users run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::acmedns::AcmeDnsStandIn;
use crate::httpreq_hook::HttpreqHook;
use crate::nsupdate::Updater;
use crate::pdns::Pdns;
use crate::{Bind, HarnessError, Pebble, PebbleOpts, ZoneSpec, certsmith_bin};

/// Every environment variable a catalogue-A solver reads: removed from the
/// child's environment before the setup's own are set.
pub const SOLVER_VARS: &[&str] = &[
    "EXEC_PATH",
    "EXEC_MODE",
    "HTTPREQ_ENDPOINT",
    "HTTPREQ_MODE",
    "HTTPREQ_USERNAME",
    "HTTPREQ_PASSWORD",
    "HTTPREQ_HTTP_TIMEOUT",
    "ACME_DNS_API_BASE",
    "ACME_DNS_STORAGE_PATH",
    "ACME_DNS_ALLOWLIST",
    "PDNS_API_URL",
    "PDNS_API_KEY",
    "PDNS_SERVER_NAME",
    "PDNS_TTL",
];

/// One solver's world. Fields are public so tests can look at the servers.
#[derive(Debug)]
pub struct Setup {
    /// The CA; its VA asks [`dns`](Self::dns).
    pub pebble: Pebble,
    /// The solver code (`--solver`).
    pub solver: &'static str,
    /// The zone certificates are issued in.
    pub zone: String,
    /// BIND9, for exec, httpreq and acmedns.
    pub bind: Option<Bind>,
    /// PowerDNS, for pdns.
    pub pdns: Option<Pdns>,
    /// The httpreq hook.
    pub hook: Option<HttpreqHook>,
    /// The acme-dns stand-in.
    pub acmedns: Option<AcmeDnsStandIn>,
    /// The DNS server certsmith resolves with and checks propagation on.
    pub dns: SocketAddr,
    /// `KEY=VALUE` solver options.
    pub opts: Vec<String>,
    /// Environment of the certsmith process (credentials, as users set them).
    pub env: Vec<(String, String)>,
    /// Scratch space (scripts, storage files); removed on drop.
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// `certsmith issue --solver … -d …` against this setup's Pebble and
    /// DNS, with the state in `state`; JSON output.
    pub fn issue(&self, state: &Path, domains: &[&str]) -> Command {
        let mut cmd = Command::new(certsmith_bin());
        cmd.args([
            "issue",
            "--solver",
            self.solver,
            "--agree-tos",
            "--output",
            "json",
        ]);
        for d in domains {
            cmd.args(["-d", d]);
        }
        cmd.args(["--server", &self.pebble.directory_url()])
            .arg("--ca-cert")
            .arg(self.pebble.ca_cert_path())
            .arg("--state-dir")
            .arg(state)
            .args(["--dns-resolver", &self.dns.to_string()])
            .args(["--propagation-server", &self.dns.to_string()])
            .env_remove("CERTSMITH_PLUGIN_PATH");
        for o in &self.opts {
            cmd.args(["--solver-opt", o]);
        }
        for v in SOLVER_VARS {
            cmd.env_remove(v).env_remove(format!("{v}_FILE"));
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// The BIND updater (exec, httpreq, acmedns setups).
    pub fn updater(&self) -> Option<Updater> {
        self.bind.as_ref().map(Updater::new)
    }
}

fn pebble_on(dns: SocketAddr) -> Result<Pebble, HarnessError> {
    Pebble::start(PebbleOpts {
        dns_server: Some(dns),
        ..PebbleOpts::default()
    })
}

fn scratch() -> Result<tempfile::TempDir, HarnessError> {
    crate::temp_dir("certsmith-catalogue-")
}

/// `tests/fixtures/lego-exec-nsupdate.sh`: a lego exec hook that writes
/// into BIND with nsupdate.
pub fn lego_exec_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lego-exec-nsupdate.sh")
}

/// exec: BIND9 serving `zone`, and `EXEC_PATH` set to the lego exec hook
/// script, which finds BIND through `DNS_SERVER`, `DNS_PORT`, `TSIG_KEY`.
pub fn exec_setup(zone: &str) -> Result<Setup, HarnessError> {
    let bind = Bind::start_resolving(&[ZoneSpec::new(zone)])?;
    let pebble = pebble_on(bind.addr())?;
    let updater = Updater::new(&bind);
    Ok(Setup {
        pebble,
        solver: "exec",
        zone: zone.to_owned(),
        dns: bind.addr(),
        opts: Vec::new(),
        env: vec![
            ("EXEC_PATH".into(), lego_exec_script().display().to_string()),
            ("DNS_SERVER".into(), bind.addr().ip().to_string()),
            ("DNS_PORT".into(), bind.addr().port().to_string()),
            ("TSIG_KEY".into(), updater.key_arg().to_owned()),
        ],
        bind: Some(bind),
        pdns: None,
        hook: None,
        acmedns: None,
        dir: scratch()?,
    })
}

/// httpreq: BIND9 serving `zone` and a lego-httpreq hook writing into it
/// under `/acme`, with basic auth `certsmith`/`credentials` given through
/// `HTTPREQ_USERNAME` and `HTTPREQ_PASSWORD`.
pub fn httpreq_setup(zone: &str, credentials: (&str, &str)) -> Result<Setup, HarnessError> {
    let bind = Bind::start_resolving(&[ZoneSpec::new(zone)])?;
    let pebble = pebble_on(bind.addr())?;
    let hook = HttpreqHook::start(&bind, "/acme", Some(credentials))?;
    Ok(Setup {
        pebble,
        solver: "httpreq",
        zone: zone.to_owned(),
        dns: bind.addr(),
        opts: Vec::new(),
        env: vec![
            ("HTTPREQ_ENDPOINT".into(), hook.endpoint()),
            ("HTTPREQ_USERNAME".into(), credentials.0.to_owned()),
            ("HTTPREQ_PASSWORD".into(), credentials.1.to_owned()),
        ],
        bind: Some(bind),
        pdns: None,
        hook: Some(hook),
        acmedns: None,
        dir: scratch()?,
    })
}

/// acmedns: BIND9 serving `zone` and `auth.test` (acme-dns's zone), the
/// acme-dns stand-in writing into `auth.test`, and `ACME_DNS_STORAGE_PATH`
/// in the scratch directory (absent until an account is stored). No CNAME
/// yet: see [`acmedns_delegate`].
pub fn acmedns_setup(zone: &str) -> Result<Setup, HarnessError> {
    let bind = Bind::start_resolving(&[ZoneSpec::new(zone), ZoneSpec::new("auth.test")])?;
    let pebble = pebble_on(bind.addr())?;
    let acme = AcmeDnsStandIn::start(&bind, "auth.test")?;
    let dir = scratch()?;
    Ok(Setup {
        pebble,
        solver: "acmedns",
        zone: zone.to_owned(),
        dns: bind.addr(),
        opts: Vec::new(),
        env: vec![
            ("ACME_DNS_API_BASE".into(), acme.api_base()),
            (
                "ACME_DNS_STORAGE_PATH".into(),
                acmedns_storage(dir.path()).display().to_string(),
            ),
        ],
        bind: Some(bind),
        pdns: None,
        hook: None,
        acmedns: Some(acme),
        dir,
    })
}

/// The storage file of an [`acmedns_setup`] whose scratch dir is `dir`.
pub fn acmedns_storage(dir: &Path) -> PathBuf {
    dir.join("acme-dns-accounts.json")
}

/// Registers an account for `domain` at the stand-in, stores it as
/// certbot's acme-dns hook does (the `/register` answer under the domain),
/// and creates the CNAME `_acme-challenge.<domain>` → fulldomain in BIND:
/// what an operator does once. Returns the fulldomain.
pub fn acmedns_delegate(setup: &Setup, domain: &str) -> Result<String, HarnessError> {
    let acme = setup.acmedns.as_ref().ok_or_else(|| HarnessError::Io {
        context: "acmedns_delegate needs an acmedns_setup".into(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let account = acme.register()?;
    let full = account["fulldomain"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let path = acmedns_storage(setup.dir.path());
    let mut all: serde_json::Map<String, serde_json::Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    all.insert(domain.to_owned(), account);
    crate::write_file(&path, &serde_json::Value::Object(all).to_string())?;
    if let Some(u) = setup.updater() {
        u.set_cname(&format!("_acme-challenge.{domain}"), &full)?;
    }
    Ok(full)
}

/// pdns: a real PowerDNS with `zone`, its API URL and key through
/// `PDNS_API_URL` and `PDNS_API_KEY`.
pub fn pdns_setup(zone: &str) -> Result<Setup, HarnessError> {
    let pdns = Pdns::start(&[zone])?;
    let pebble = pebble_on(pdns.dns_addr())?;
    Ok(Setup {
        pebble,
        solver: "pdns",
        zone: zone.to_owned(),
        dns: pdns.dns_addr(),
        opts: Vec::new(),
        env: vec![
            ("PDNS_API_URL".into(), pdns.api_url()),
            ("PDNS_API_KEY".into(), pdns.api_key().to_owned()),
        ],
        bind: None,
        pdns: Some(pdns),
        hook: None,
        acmedns: None,
        dir: scratch()?,
    })
}
