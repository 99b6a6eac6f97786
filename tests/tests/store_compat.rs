//! A state directory written by certsmith 0.1.0 (`tests/fixtures/state-0.1.0`,
//! made with that release against Pebble: one account, one certificate
//! with two versions, an empty journal) opens unchanged through the
//! storage trait, is listed by the CLI, and takes a new version in the
//! same layout.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use certsmith_core::acme::{AcmeClient, account_id, legacy_account_id, stored_accounts};
use certsmith_core::renewal;
use certsmith_core::store::{CertFiles, Store, VersionRecord};
use certsmith_tests::{TempState, certsmith_bin};
use serde_json::Value;

const NAME: &str = "fixture.example.test";
const SERVER: &str = "https://127.0.0.1:14000/dir";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/state-0.1.0")
}

/// Copies the fixture, keeping the `current` symlink a symlink (git keeps
/// it so; a plain copy would follow it).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("type");
        if kind.is_symlink() {
            let link = fs::read_link(entry.path()).expect("readlink");
            std::os::unix::fs::symlink(link, &target).expect("symlink");
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn old_state() -> (TempState, PathBuf) {
    let tmp = TempState::new().expect("temp dir");
    let state = tmp.root().join("old-state");
    copy_tree(&fixture(), &state);
    (tmp, state)
}

#[test]
fn a_state_directory_of_0_1_0_reads_unchanged() {
    let (_tmp, state) = old_state();
    let store = Store::open(&state).expect("opens");
    assert_eq!(store.cert_names().expect("names"), [NAME]);
    let lineage = store.load_lineage(NAME).expect("parses").expect("exists");
    assert_eq!(
        lineage.domains,
        ["fixture.example.test", "www.fixture.example.test"]
    );
    assert_eq!(lineage.key_type, "ec-p384");
    assert_eq!(lineage.server, SERVER);
    assert_eq!(lineage.email.as_deref(), Some("ops@example.test"));
    assert_eq!(lineage.deploy_hook.as_deref(), Some("true"));
    assert_eq!(lineage.versions.len(), 2);
    assert!(lineage.renewal.is_some(), "the renewal schedule is kept");

    assert_eq!(store.current_version(NAME).expect("current"), Some(2));
    let current = store.read_version(NAME, None).expect("read").expect("v2");
    assert_eq!(current.version, 2);
    let facts = renewal::read_cert_pem(&current.files.cert_pem, "v2").expect("a certificate");
    assert_eq!(facts.serial, lineage.versions[1].serial);
    assert!(
        current
            .files
            .privkey_pem
            .as_ref()
            .is_some_and(|k| k.expose().contains("PRIVATE KEY"))
    );
    assert!(
        current
            .files
            .fullchain_pem
            .starts_with(current.files.cert_pem.trim_end())
    );
    let one = store
        .read_version(NAME, Some(1))
        .expect("read")
        .expect("v1");
    let facts1 = renewal::read_cert_pem(&one.files.cert_pem, "v1").expect("a certificate");
    assert_eq!(facts1.serial, lineage.versions[0].serial);
    assert_eq!(
        renewal::read_current(&store, NAME)
            .expect("read")
            .map(|f| f.serial),
        Some(facts.serial)
    );

    let accounts = stored_accounts(&store).expect("accounts parse");
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].server, SERVER);
    assert_eq!(accounts[0].contact, ["mailto:ops@example.test"]);
    assert!(accounts[0].in_use, "the one account of its CA");
    // The account is the CA's one, whatever contact is asked for: found
    // under its 0.1.0 id (directory and contact), where it stays.
    let client = AcmeClient::new(SERVER, None).expect("client");
    let described = client
        .describe_account(&store)
        .expect("found by its 0.1.0 id")
        .expect("stored");
    assert_eq!(described.url, accounts[0].url);
    assert_eq!(described.path, accounts[0].path);
    assert!(
        described
            .path
            .ends_with(legacy_account_id(SERVER, &described.contact) + "/account.json"),
        "{}",
        described.path.display()
    );
    assert!(store.journal_entries().expect("journal").is_empty());
}

#[test]
fn a_state_directory_of_0_1_0_takes_a_new_version_in_the_same_layout() {
    let (_tmp, state) = old_state();
    let store = Store::open(&state).expect("opens");
    let v2 = store.read_version(NAME, None).expect("read").expect("v2");
    let lineage = store.load_lineage(NAME).expect("parses").expect("exists");
    let files = CertFiles {
        cert_pem: v2.files.cert_pem.clone(),
        chain_pem: v2.files.chain_pem.clone(),
        fullchain_pem: v2.files.fullchain_pem.clone(),
        privkey_pem: v2.files.privkey_pem.clone(),
        csr_pem: None,
    };
    let record = VersionRecord {
        version: 0,
        ..lineage.versions[1].clone()
    };
    let fresh = certsmith_core::store::Lineage {
        email: None,
        deploy_hook: None,
        renewal: None,
        ..lineage.clone()
    };
    let saved = store
        .commit_version(NAME, &files, &fresh, record)
        .expect("commit");
    assert_eq!(saved.version, 3);
    let cert_dir = state.join("certs").join(NAME);
    assert_eq!(
        saved.dir,
        fs::canonicalize(&cert_dir).expect("dir").join("versions/3")
    );
    assert_eq!(
        fs::read_link(cert_dir.join("current")).expect("symlink"),
        PathBuf::from("versions/3")
    );
    for file in ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"] {
        assert!(cert_dir.join("versions/3").join(file).is_file(), "{file}");
        assert!(cert_dir.join("versions/1").join(file).is_file(), "{file}");
    }
    let after = store.load_lineage(NAME).expect("parses").expect("exists");
    let numbers: Vec<u32> = after.versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(
        after.email.as_deref(),
        Some("ops@example.test"),
        "settings carry over"
    );
    assert_eq!(after.deploy_hook.as_deref(), Some("true"));
}

#[test]
fn certsmith_list_shows_a_0_1_0_state_directory() {
    let (_tmp, state) = old_state();
    let out = Command::new(certsmith_bin())
        .args(["list", "--output", "json", "--state-dir"])
        .arg(&state)
        .env_remove("CERTSMITH_STATE_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run certsmith");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let row = rows
        .iter()
        .find(|r| r["name"] == NAME)
        .unwrap_or_else(|| panic!("{NAME} listed: {stdout}"));
    assert_eq!(row["version"], 2, "{row}");
    assert_eq!(row["state"], "valid", "{row}");
}

/// An account stored the 0.1.0 way (under the id of its directory and
/// contact) for a live Pebble, next to the fixture's: `issue` uses it,
/// with the same `--email` or none, and creates no new one.
#[test]
fn issue_on_a_0_1_0_state_directory_uses_its_account() {
    use crate::accounts::{account_files, account_list, certsmith, config, issue, p};
    let pebble = certsmith_tests::Pebble::start(certsmith_tests::PebbleOpts::default())
        .expect("start Pebble");
    let (tmp, state) = old_state();
    let config = config(&pebble, &tmp, &state);

    // An account of this Pebble, moved to where 0.1.0 kept it.
    let r = issue(&config, "first.test", &["--email", "ops@example.test"]).ok();
    assert!(r.stderr.contains("account created"), "{}", r.describe());
    let server = pebble.directory_url();
    let made = account_files(&state)
        .into_iter()
        .find(|f| f.parent().is_some_and(|d| d.ends_with(account_id(&server))))
        .expect("the new account");
    let old_dir = made
        .parent()
        .and_then(Path::parent)
        .expect("host dir")
        .join(legacy_account_id(
            &server,
            &["mailto:ops@example.test".to_owned()],
        ));
    fs::rename(made.parent().expect("id dir"), &old_dir).expect("move to the 0.1.0 id");
    let url = certsmith(&[
        "account",
        "show",
        "--config",
        p(&config),
        "--output",
        "json",
    ])
    .ok()
    .json()[0]["url"]
        .as_str()
        .expect("url")
        .to_owned();
    let files = account_files(&state);
    assert_eq!(files.len(), 2, "the fixture's and this Pebble's: {files:?}");

    for (name, extra) in [
        ("second.test", &["--email", "ops@example.test"][..]),
        ("third.test", &[][..]),
    ] {
        let r = issue(&config, name, extra).ok();
        assert!(!r.stderr.contains("account created"), "{}", r.describe());
        assert!(
            r.stderr.contains(&format!("using account {url}")),
            "{}",
            r.describe()
        );
        assert_eq!(account_files(&state), files, "no new account");
    }
    let listed = account_list(&config);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|a| a["in_use"] == true), "{listed:?}");
    // The fixture's certificate is untouched.
    let store = Store::open(&state).expect("opens");
    assert_eq!(store.current_version(NAME).expect("current"), Some(2));
}
