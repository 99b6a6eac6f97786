//! Test harness for certsmith's end-to-end tests.
//!
//! Starts real servers on loopback, each on free ports chosen at run time so
//! that many tests run in parallel (threads under `cargo test`, processes
//! under `cargo nextest`):
//!
//! - [`Pebble`]: Let's Encrypt's test CA (`/usr/bin/pebble`, Debian package
//!   `pebble`), with its own local HTTPS CA and, unless told otherwise, its
//!   own [`ChallTestSrv`] as DNS server.
//! - [`ChallTestSrv`]: `pebble-challtestsrv` as a mock DNS server with an
//!   HTTP API to add TXT and A records.
//!
//! Every child process is killed when its owner is dropped, and by the
//! kernel (`PR_SET_PDEATHSIG`) when the test process dies, so a killed test
//! run leaks nothing.
//!
//! A missing server binary is an error, never a skip: tests fail and the
//! message says how to install it.
//!
//! Set `CERTSMITH_TEST_KEEP=1` to keep the temporary directories (configs,
//! certificates, server logs) after the test; their paths are printed.
//!
//! ```no_run
//! # async fn demo() -> Result<(), certsmith_tests::HarnessError> {
//! use certsmith_tests::{Pebble, PebbleOpts};
//! let pebble = Pebble::start(PebbleOpts::default())?;
//! let root = pebble.root_pem().await?; // verify issued chains against this
//! let cts = pebble.challtestsrv().expect("started with its own DNS");
//! cts.set_txt("_acme-challenge.a.test", "value")?;
//! # let _ = root; Ok(()) }
//! ```

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

pub mod acmedns;
pub mod ari_proxy;
pub mod azure;
pub mod bind;
pub mod catalogue;
pub mod catalogue_a;
mod challtestsrv;
pub mod cloudflare;
mod conn_server;
pub mod digitalocean;
pub mod dns;
pub mod fault_proxy;
pub mod fleet;
pub mod gcloud;
pub mod hetzner;
mod http;
pub mod httpreq_hook;
mod mini_http;
pub mod moto;
pub mod nsupdate;
pub mod pdns;
mod pebble;
pub mod postgres;
mod process;
pub mod standin;
pub mod static_server;
pub mod throttle_proxy;
mod tls;

pub use bind::{Bind, ZoneSpec};
pub use challtestsrv::ChallTestSrv;
pub use pebble::{CertStatus, Pebble, PebbleOpts};
pub use process::{ServerProcess, spawn_guarded};
pub use static_server::StaticServer;
pub use tls::TestCa;

/// Gives the plugin SDK of this test process certsmith's own host services
/// (its HTTP client, ABI 1.3), so a solver called in-process sends its
/// requests the way it does when certsmith loads it. Call it before the
/// first request; calling it again is harmless.
pub fn attach_plugin_host() {
    certsmith_plugin_api::sdk::attach_host(certsmith_core::plugin::host_api());
}

/// Where the Debian package puts Pebble. Override with `PEBBLE_BIN`.
pub const PEBBLE_BIN: &str = "/usr/bin/pebble";
/// Where the Debian package puts pebble-challtestsrv. Override with
/// `PEBBLE_CHALLTESTSRV_BIN`.
pub const CHALLTESTSRV_BIN: &str = "/usr/bin/pebble-challtestsrv";

/// Everything that can go wrong while setting up a test. Each message says
/// what to do about it. `Debug` prints the message too, so a test that
/// returns `Result<(), HarnessError>` fails with a readable reason.
#[derive(thiserror::Error)]
pub enum HarnessError {
    /// A server binary is missing.
    #[error(
        "{program} is not installed: run `apt-get install pebble` (or scripts/test, which installs it); looked for {}",
        path.display()
    )]
    NotInstalled {
        /// `pebble` or `pebble-challtestsrv`.
        program: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The certsmith binary has not been built.
    #[error(
        "the certsmith binary is not built ({}): run `cargo build -p certsmith` first (scripts/test builds the whole workspace before testing), or point CERTSMITH_BIN at it",
        path.display()
    )]
    CertsmithNotBuilt {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Could not start a process.
    #[error(
        "could not start {program}: {source}; check that it is executable and that /tmp is writable"
    )]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A server exited while starting.
    #[error("{program} exited during start-up ({status}); its log {} ends with:\n{log_tail}", log_path.display())]
    Exited {
        /// The program.
        program: String,
        /// How it exited.
        status: String,
        /// Its full log.
        log_path: PathBuf,
        /// The end of its log.
        log_tail: String,
    },
    /// A server did not become ready in time.
    #[error("{program} did not answer {what} within {secs} s; the machine may be overloaded (run fewer tests at once: --test-threads / -j). Its log {} ends with:\n{log_tail}", log_path.display())]
    NotReady {
        /// The program.
        program: String,
        /// What was polled.
        what: String,
        /// How long we waited.
        secs: u64,
        /// Its full log.
        log_path: PathBuf,
        /// The end of its log.
        log_tail: String,
    },
    /// Every attempt to start a server hit ports that another process took.
    #[error(
        "{program}: ports kept being taken by other processes ({attempts} attempts); rerun, or run fewer tests at once (--test-threads / -j)"
    )]
    PortsExhausted {
        /// The program.
        program: String,
        /// How many starts were tried.
        attempts: u32,
    },
    /// File system or socket error during set-up.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Generating the local TLS CA failed.
    #[error("could not generate the test TLS certificates with rcgen: {0}")]
    CertGen(#[from] rcgen::Error),
    /// TLS client set-up failed.
    #[error("could not set up a TLS client trusting the test CA: {0}")]
    Tls(String),
    /// An HTTP request to a server's management API failed.
    #[error("{method} {url} failed: {message}; is the server still running? (see its log {})", log_path.display())]
    Http {
        /// The method.
        method: &'static str,
        /// The URL.
        url: String,
        /// What went wrong (transport error or status and body).
        message: String,
        /// The server's log.
        log_path: PathBuf,
    },
    /// A DNS query failed.
    #[error("DNS query for {name} to {server} failed: {message}")]
    Dns {
        /// The server asked.
        server: SocketAddr,
        /// The name asked for.
        name: String,
        /// What went wrong.
        message: String,
    },
}

impl std::fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Ports handed out by this process, never handed out twice.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn claim(port: u16) -> bool {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    guard.get_or_insert_with(HashSet::new).insert(port)
}

/// `ticks` clock ticks (`_SC_CLK_TCK`, the unit of the CPU and steal times
/// in `/proc`) as a duration.
pub fn clock_ticks(ticks: u64) -> std::time::Duration {
    // SAFETY: sysconf only reads a configuration value.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    std::time::Duration::from_millis(ticks * 1000 / hz)
}

/// The cleanup journal's entries (`*.json`) in the state directory
/// `state`: none when the journal was never written to.
pub fn journal_entries(state: &Path) -> usize {
    std::fs::read_dir(state.join("journal")).map_or(0, |dir| {
        dir.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count()
    })
}

/// A TCP port on 127.0.0.1 that is free right now (bind port 0, read it,
/// close). Another process can still take it before it is used: servers
/// started by this crate retry on collision. Never returns the same port
/// twice within one process.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        if let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            && let Ok(addr) = l.local_addr()
            && claim(addr.port())
        {
            return addr.port();
        }
    }
    panic!("no free TCP port on 127.0.0.1 after 1000 tries");
}

/// A port on 127.0.0.1 free for both TCP and UDP right now, for DNS servers.
pub fn free_udp_tcp_port() -> u16 {
    for _ in 0..1000 {
        let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) else {
            continue;
        };
        let Ok(addr) = l.local_addr() else { continue };
        if UdpSocket::bind(addr).is_ok() && claim(addr.port()) {
            return addr.port();
        }
    }
    panic!("no port free for both TCP and UDP on 127.0.0.1 after 1000 tries");
}

/// The `certsmith` binary built next to this test executable
/// (`target/<profile>/certsmith`; the test runs from `target/<profile>/deps`).
/// `CERTSMITH_BIN` overrides it. The file may not exist: see
/// [`try_certsmith_bin`].
pub fn certsmith_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CERTSMITH_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir.join(format!("certsmith{}", std::env::consts::EXE_SUFFIX))
}

/// [`certsmith_bin`], or an error telling how to build it.
pub fn try_certsmith_bin() -> Result<PathBuf, HarnessError> {
    let path = certsmith_bin();
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::CertsmithNotBuilt { path })
    }
}

pub(crate) fn keep_temp() -> bool {
    std::env::var_os("CERTSMITH_TEST_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
}

pub(crate) fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, HarnessError> {
    let mut dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|source| HarnessError::Io {
            context: "creating a temporary directory (is TMPDIR writable?)".into(),
            source,
        })?;
    if keep_temp() {
        dir.disable_cleanup(true);
        eprintln!("certsmith-tests: keeping {}", dir.path().display());
    }
    Ok(dir)
}

/// A temporary directory for one test: `path()` is an empty state directory
/// (mode 0700) for `--state-dir`; `root()` is its parent, for config files,
/// webroots and the like. Removed on drop (unless `CERTSMITH_TEST_KEEP=1`).
#[derive(Debug)]
pub struct TempState {
    dir: tempfile::TempDir,
    state: PathBuf,
}

impl TempState {
    /// Create the directories.
    pub fn new() -> Result<Self, HarnessError> {
        let dir = temp_dir("certsmith-test-")?;
        let state = dir.path().join("state");
        std::fs::create_dir(&state).map_err(|source| HarnessError::Io {
            context: format!("creating {}", state.display()),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).map_err(
                |source| HarnessError::Io {
                    context: format!("chmod 0700 {}", state.display()),
                    source,
                },
            )?;
        }
        Ok(Self { dir, state })
    }

    /// The state directory (pass as `--state-dir`).
    pub fn path(&self) -> &Path {
        &self.state
    }

    /// The temporary root that contains the state directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `root().join(name)`.
    pub fn file(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Keep the directory after the test (for debugging); returns the root.
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }
}

/// Look up a server binary: `$env_var`, else `default`.
pub(crate) fn find_bin(
    program: &str,
    env_var: &str,
    default: &str,
) -> Result<PathBuf, HarnessError> {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::NotInstalled {
            program: program.to_owned(),
            path,
        })
    }
}

/// Whether a start-up log shows a port collision, to retry on other ports.
pub(crate) fn log_shows_port_collision(log: &str) -> bool {
    log.contains("address already in use")
}

/// Writes a harness file (config, zone, certificate), naming it on failure.
pub(crate) fn write_file(path: &Path, contents: &str) -> Result<(), HarnessError> {
    std::fs::write(path, contents).map_err(|source| HarnessError::Io {
        context: format!("writing {}", path.display()),
        source,
    })
}
