//! One account per CA directory per state directory (issue 11), through
//! the built binary against a real Pebble: leaving `--email` out never
//! creates a second account, another `--email` changes the contact of the
//! one account (at the CA and in the store), a renewal never changes it,
//! and `account list|show|rollover` act on that account.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin};
use serde_json::Value;

/// What one certsmith run did.
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// What a finished process printed and how it exited.
    pub(crate) fn from(o: std::process::Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// The JSON object about certificate `name`.
    pub(crate) fn about(&self, name: &str) -> Value {
        self.json()
            .into_iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no object for {name}: {}", self.describe()))
    }

    /// The index of the first stderr line containing every one of `parts`.
    pub(crate) fn line_of(&self, parts: &[&str]) -> usize {
        self.stderr
            .lines()
            .position(|l| parts.iter().all(|p| l.contains(p)))
            .unwrap_or_else(|| panic!("no stderr line with {parts:?}: {}", self.describe()))
    }

    pub(crate) fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", self.describe()))
            })
            .collect()
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// Asserts exit 0.
    pub(crate) fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "{}", self.describe());
        self
    }
}

pub(crate) fn certsmith(args: &[&str]) -> Run {
    certsmith_env(args, &[])
}

/// [`certsmith`] with variables `env` set.
pub(crate) fn certsmith_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(certsmith_bin())
        .args(args)
        .env_remove("CERTSMITH_STATE_DIR")
        .env_remove("CERTSMITH_PLUGIN_PATH")
        .env_remove("CERTSMITH_CONFIG")
        .env_remove("CERTSMITH_OUTPUT")
        .env_remove("CERTSMITH_EMAIL")
        .env_remove("CERTSMITH_SERVER")
        .env_remove("CERTSMITH_STORE")
        .env_remove("CERTSMITH_STORE_KEY")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run certsmith");
    Run::from(out)
}

pub(crate) fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A config file whose `[defaults]` carry what `issue` needs (server, CA
/// bundle, `state`, terms, DNS) but no contact, and no certificate.
pub(crate) fn config(pebble: &Pebble, dir: &TempState, state: &Path) -> PathBuf {
    let cts = pebble.challtestsrv().expect("Pebble's challtestsrv");
    let text = format!(
        r#"[defaults]
server = "{server}"
ca_cert = "{ca}"
agree_tos = true
state_dir = "{state}"
dns_resolvers = ["{dns}"]
propagation_servers = ["{dns}"]
propagation_timeout = "30s"

[solvers.challtestsrv]
url = "{mgmt}"
"#,
        server = pebble.directory_url(),
        ca = p(pebble.ca_cert_path()),
        state = p(state),
        dns = cts.dns_addr(),
        mgmt = cts.mgmt_url(),
    );
    let path = dir.file("certsmith.toml");
    fs::write(&path, text).expect("write config");
    path
}

/// `issue -d NAME` with the challtestsrv solver, text output.
pub(crate) fn issue(config: &Path, name: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "issue",
        "--config",
        p(config),
        "--solver",
        "challtestsrv",
        "-d",
        name,
    ];
    args.extend_from_slice(extra);
    certsmith(&args)
}

/// `account list --output json`.
pub(crate) fn account_list(config: &Path) -> Vec<Value> {
    certsmith(&["account", "list", "--config", p(config), "--output", "json"])
        .ok()
        .json()
}

/// Every `account.json` under `state/accounts`, sorted.
pub(crate) fn account_files(state: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for host in fs::read_dir(state.join("accounts")).expect("accounts dir") {
        for id in fs::read_dir(host.expect("host").path()).expect("host dir") {
            let file = id.expect("id").path().join("account.json");
            if file.is_file() {
                out.push(file);
            }
        }
    }
    out.sort();
    out
}

fn contact_of(v: &Value) -> Vec<String> {
    v["contact"]
        .as_array()
        .expect("contact array")
        .iter()
        .map(|c| c.as_str().expect("string").to_owned())
        .collect()
}

#[test]
fn one_account_per_ca_and_email_changes_its_contact() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let dir = TempState::new().expect("state");
    let state = dir.path().join("state");
    let config = config(&pebble, &dir, &state);
    let c = p(&config);

    let r = issue(&config, "one.test", &["--email", "one@example.test"]).ok();
    assert!(r.stderr.contains("account created"), "{}", r.describe());
    let listed = account_list(&config);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let url = listed[0]["url"].as_str().expect("url").to_owned();
    assert_eq!(contact_of(&listed[0]), ["mailto:one@example.test"]);
    assert_eq!(listed[0]["in_use"], true);
    let files = account_files(&state);

    // Leaving --email out uses the account as it is.
    let r = issue(&config, "two.test", &[]).ok();
    assert!(!r.stderr.contains("account created"), "{}", r.describe());
    assert!(
        r.stderr.contains(&format!("using account {url}")),
        "{}",
        r.describe()
    );
    assert!(!r.stderr.contains("contact of account"), "{}", r.describe());
    assert_eq!(account_files(&state), files, "no second account");
    assert_eq!(
        contact_of(&account_list(&config)[0]),
        ["mailto:one@example.test"]
    );

    // Another --email changes the contact of the same account.
    let r = issue(&config, "three.test", &["--email", "three@example.test"]).ok();
    assert!(
        r.stderr.contains(&format!(
            "contact of account {url} changed to mailto:three@example.test"
        )),
        "{}",
        r.describe()
    );
    assert!(!r.stderr.contains("account created"), "{}", r.describe());
    assert_eq!(account_files(&state), files, "no second account");
    let shown = certsmith(&["account", "show", "--config", c, "--output", "json"])
        .ok()
        .json();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["url"], url.as_str());
    assert_eq!(contact_of(&shown[0]), ["mailto:three@example.test"]);

    // A renewal of a certificate issued with the first address leaves the
    // contact alone.
    let r = certsmith(&["renew", "--config", c, "--cert-name", "one.test", "--force"]).ok();
    assert!(!r.stderr.contains("contact of account"), "{}", r.describe());
    assert_eq!(
        contact_of(&account_list(&config)[0]),
        ["mailto:three@example.test"]
    );

    // The text list and a rollover act on that one account.
    let text = certsmith(&["account", "list", "--config", c]).ok();
    assert!(
        text.stdout.contains(&format!("account {url} (in use)")),
        "{}",
        text.describe()
    );
    assert!(
        text.stdout.contains("mailto:three@example.test"),
        "{}",
        text.describe()
    );
    let r = certsmith(&["account", "rollover", "--config", c, "--output", "json"]).ok();
    assert_eq!(
        r.json()[0]["account"]["url"],
        url.as_str(),
        "{}",
        r.describe()
    );
    let r = issue(&config, "four.test", &[]).ok();
    assert!(
        r.stderr.contains(&format!("using account {url}")),
        "{}",
        r.describe()
    );
    assert_eq!(account_files(&state), files, "still one account");
}
