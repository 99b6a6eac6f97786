//! Changes to a running [`Bind`]'s zones with `nsupdate` (Debian package
//! `bind9-dnsutils`), the tool a lego exec script uses: the stand-ins
//! (acme-dns, lego's httpreq hook) write what they serve into BIND through
//! it, and tests add CNAMEs with it, so Pebble's VA sees real DNS.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::{Bind, HarnessError};

/// Where Debian puts `nsupdate`. Override with `NSUPDATE_BIN`.
pub const NSUPDATE_BIN: &str = "/usr/bin/nsupdate";

/// What `nsupdate` needs to update a [`Bind`]: cheap to clone and to hand
/// to a server thread.
#[derive(Clone)]
pub struct Updater {
    /// BIND's address.
    pub addr: SocketAddr,
    /// `hmac-sha256:certsmith-test-key.:<secret>`, for `nsupdate -y`.
    key_arg: String,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Updater {
    /// An updater for `bind`'s zones, with its TSIG key.
    pub fn new(bind: &Bind) -> Self {
        Updater {
            addr: bind.addr(),
            key_arg: format!(
                "{}:{}:{}",
                bind.tsig_algorithm(),
                bind.tsig_key_name(),
                bind.tsig_secret_b64()
            ),
        }
    }

    /// The `-y` argument of `nsupdate`: `ALGORITHM:KEYNAME:SECRET`.
    pub fn key_arg(&self) -> &str {
        &self.key_arg
    }

    /// Runs `nsupdate` with `commands` (`update add …` lines), after a
    /// `server` line and before `send`.
    pub fn run(&self, commands: &str) -> Result<(), HarnessError> {
        let bin = std::env::var("NSUPDATE_BIN").unwrap_or_else(|_| NSUPDATE_BIN.to_owned());
        let mut child = Command::new(&bin)
            .args(["-y", &self.key_arg])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HarnessError::Io {
                context: format!(
                    "running {bin} (apt-get install bind9-dnsutils, or scripts/test, installs it)"
                ),
                source,
            })?;
        let script = format!(
            "server {} {}\n{}\nsend\n",
            self.addr.ip(),
            self.addr.port(),
            commands.trim_end()
        );
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|source| HarnessError::Io {
                context: format!("waiting for {bin}"),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(HarnessError::Io {
                context: format!(
                    "nsupdate failed ({}) on:\n{}\n{}{}",
                    out.status,
                    commands,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                source: std::io::Error::other("nsupdate failed"),
            })
        }
    }

    /// Makes the TXT set at `fqdn` exactly `values` (none: deleted).
    pub fn set_txt(&self, fqdn: &str, values: &[String]) -> Result<(), HarnessError> {
        let name = format!("{}.", fqdn.trim_end_matches('.'));
        let mut cmds = format!("update delete {name} TXT\n");
        for v in values {
            cmds.push_str(&format!("update add {name} 1 TXT \"{v}\"\n"));
        }
        self.run(&cmds)
    }

    /// Adds one TXT value at `fqdn`.
    pub fn add_txt(&self, fqdn: &str, value: &str) -> Result<(), HarnessError> {
        let name = format!("{}.", fqdn.trim_end_matches('.'));
        self.run(&format!("update add {name} 1 TXT \"{value}\""))
    }

    /// Deletes one TXT value at `fqdn`.
    pub fn delete_txt(&self, fqdn: &str, value: &str) -> Result<(), HarnessError> {
        let name = format!("{}.", fqdn.trim_end_matches('.'));
        self.run(&format!("update delete {name} TXT \"{value}\""))
    }

    /// Makes `fqdn` a CNAME to `target`.
    pub fn set_cname(&self, fqdn: &str, target: &str) -> Result<(), HarnessError> {
        let name = format!("{}.", fqdn.trim_end_matches('.'));
        let to = format!("{}.", target.trim_end_matches('.'));
        self.run(&format!(
            "update delete {name} CNAME\nupdate add {name} 60 CNAME {to}"
        ))
    }
}
