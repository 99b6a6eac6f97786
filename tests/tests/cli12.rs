//! Issue 12, items 8 and 9, through the built binary against a real
//! Pebble: pre-, post- and deploy hooks (their order around the
//! challenges, a deploy hook per certificate as soon as it is stored while
//! the batch goes on, a failing or hanging pre-hook), and `--dry-run`
//! (`issue`, `run`, `renew` against a `--dry-run-server`, the state
//! directory unchanged byte for byte, a report naming each certificate).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin};

use crate::accounts::{Run, certsmith, p};

fn orders_in_log(pebble: &Pebble) -> usize {
    fs::read_to_string(pebble.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Added order"))
        .count()
}

/// `[defaults]` for Pebble with its challtestsrv as the solver, then `extra`.
fn config(pebble: &Pebble, state: &Path, dir: &Path, extra: &str) -> PathBuf {
    let cts = pebble.challtestsrv().expect("Pebble's challtestsrv");
    let text = format!(
        r#"[defaults]
server = "{server}"
ca_cert = "{ca}"
email = "ops@example.com"
agree_tos = true
state_dir = "{state}"
solver = "challtestsrv"
dns_resolvers = ["{dns}"]
propagation_servers = ["{dns}"]
propagation_timeout = "30s"

[solvers.challtestsrv]
url = "{mgmt}"
{extra}
"#,
        server = pebble.directory_url(),
        ca = p(pebble.ca_cert_path()),
        state = p(state),
        dns = cts.dns_addr(),
        mgmt = cts.mgmt_url(),
    );
    let path = dir.join("certsmith.toml");
    fs::write(&path, text).expect("write config");
    path
}

/// Every file under `dir` (symlinks as their targets), with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path.strip_prefix(root).expect("under root").to_owned();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).expect("link");
                out.insert(rel, target.into_os_string().into_encoded_bytes());
            } else if meta.is_dir() {
                out.insert(rel.join(""), Vec::new());
                walk(root, &path, out);
            } else {
                out.insert(rel, fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Item 8: the pre-hook runs before the challenge is presented, the
/// post-hook after it is removed, the deploy hook right after the
/// certificate is saved, each with its variables; a hook timing out is
/// killed with a clear error (exit 9) and nothing is ordered.
#[test]
fn hooks_run_around_the_challenges_and_after_the_save() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let state = TempState::new().expect("state");
    let dir = state.root().to_owned();
    let log = dir.join("hooks.log");
    let config = config(&pebble, state.path(), &dir, "");
    let record = |what: &str| {
        format!(
            "echo \"{what} $CERTSMITH_HOOK $CERTSMITH_CERT_NAME [$CERTSMITH_DOMAINS] result=$CERTSMITH_RESULT version=$CERTSMITH_VERSION full=$CERTSMITH_FULLCHAIN\" >> {}",
            p(&log)
        )
    };
    let (pre, post, deploy) = (record("PRE"), record("POST"), record("DEPLOY"));
    let r = certsmith(&[
        "issue",
        "--solver",
        "challtestsrv",
        "--config",
        p(&config),
        "-d",
        "hooks.test",
        "--pre-hook",
        &pre,
        "--post-hook",
        &post,
        "--deploy-hook",
        &deploy,
        "--output",
        "json",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let v = r.about("hooks.test");
    assert_eq!(v["deploy_hook"]["status"], "ok", "{v}");
    assert_eq!(v["post_hook"]["status"], "ok", "{v}");
    // The order on stderr: pre-hook, challenge presented, removed,
    // post-hook; saved, deploy hook.
    let pre_at = r.line_of(&["hooks.test", "running the pre-hook"]);
    let presented = r.line_of(&["hooks.test", "response in place"]);
    let removed = r.line_of(&["hooks.test", "response removed"]);
    let post_at = r.line_of(&["hooks.test", "running the post-hook"]);
    let saved = r.line_of(&["hooks.test", "saved version 1"]);
    let deploy_at = r.line_of(&["hooks.test", "running the deploy hook"]);
    assert!(
        pre_at < presented && presented < removed && removed < post_at,
        "{}",
        r.describe()
    );
    assert!(saved < deploy_at, "{}", r.describe());
    let lines: Vec<String> = fs::read_to_string(&log)
        .expect("hook log")
        .lines()
        .map(str::to_owned)
        .collect();
    let full = state.path().join("certs/hooks.test/current/fullchain.pem");
    assert_eq!(
        lines,
        [
            "PRE pre hooks.test [hooks.test] result= version= full=".to_owned(),
            "POST post hooks.test [hooks.test] result=ok version= full=".to_owned(),
            format!(
                "DEPLOY deploy hooks.test [hooks.test] result= version=1 full={}",
                full.display()
            ),
        ],
        "{}",
        r.describe()
    );

    // The hooks are recorded: `renew` runs them again.
    fs::remove_file(&log).expect("rm log");
    let r = certsmith(&[
        "renew",
        "--config",
        p(&config),
        "--cert-name",
        "hooks.test",
        "--force",
        "--output",
        "json",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let kinds: Vec<String> = fs::read_to_string(&log)
        .expect("hook log")
        .lines()
        .map(|l| l.split(' ').next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(kinds, ["PRE", "POST", "DEPLOY"], "{}", r.describe());

    // A pre-hook that hangs is killed with its process group after
    // --hook-timeout: nothing is ordered, the post-hook still runs, exit 9.
    fs::remove_file(&log).expect("rm log");
    let survivor = dir.join("survived");
    let hang = format!("(sleep 4; touch {}) & sleep 60", p(&survivor));
    let orders = orders_in_log(&pebble);
    let r = certsmith(&[
        "issue",
        "--solver",
        "challtestsrv",
        "--config",
        p(&config),
        "-d",
        "slow.test",
        "--pre-hook",
        &hang,
        "--post-hook",
        &post,
        "--hook-timeout",
        "1",
        "--output",
        "json",
    ]);
    assert_eq!(r.code, Some(9), "{}", r.describe());
    let v = r.about("slow.test");
    assert_eq!(v["error"]["class"], "hook", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("pre-hook") && msg.contains("within 1s"), "{v}");
    assert!(
        v["error"]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("--hook-timeout")),
        "{v}"
    );
    assert_eq!(
        orders_in_log(&pebble),
        orders,
        "no order after a failed pre-hook"
    );
    let text = fs::read_to_string(&log).expect("post-hook ran");
    assert!(
        text.contains("POST post slow.test [slow.test] result=failed"),
        "{text}"
    );
    std::thread::sleep(std::time::Duration::from_millis(4500));
    assert!(
        !survivor.exists(),
        "the pre-hook's process group was killed"
    );

    // Bad flag values name the flag.
    let r = certsmith(&[
        "issue",
        "--solver",
        "challtestsrv",
        "--config",
        p(&config),
        "-d",
        "x.test",
        "--hook-timeout",
        "0",
    ]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stderr.contains("--hook-timeout"), "{}", r.describe());
    let r = certsmith(&[
        "issue",
        "--solver",
        "challtestsrv",
        "--config",
        p(&config),
        "-d",
        "x.test",
        "--pre-hook",
        " ",
    ]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stderr.contains("--pre-hook"), "{}", r.describe());
}

/// Item 8: in a batch, each certificate's deploy hook runs as soon as it
/// is stored while the other orders go on (the second certificate's
/// pre-hook waits for the first's deploy hook: with deploy hooks after the
/// whole batch it would time out), and a failing pre-hook stops only its
/// certificate (its post-hook runs; exit 8, the others stored).
#[test]
fn deploy_hooks_run_per_certificate_while_the_batch_goes_on() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let state = TempState::new().expect("state");
    let dir = state.root().to_owned();
    let log = dir.join("hooks.log");
    let marker = dir.join("first-deployed");
    let extra = format!(
        r#"
[[certificate]]
domains = ["first.test"]
deploy_hook = "echo deploy $CERTSMITH_CERT_NAME >> {log}; touch {marker}"

[[certificate]]
domains = ["second.test"]
pre_hook = "for i in $(seq 1 200); do [ -e {marker} ] && exit 0; sleep 0.1; done; exit 1"
deploy_hook = "echo deploy $CERTSMITH_CERT_NAME >> {log}"

[[certificate]]
domains = ["broken.test"]
pre_hook = "echo 'port 80 still busy' >&2; exit 3"
post_hook = "echo post $CERTSMITH_CERT_NAME $CERTSMITH_RESULT >> {log}"
"#,
        log = p(&log),
        marker = p(&marker),
    );
    let config = config(&pebble, state.path(), &dir, &extra);
    let r = certsmith(&["run", "--config", p(&config), "--output", "json"]);
    assert_eq!(r.code, Some(8), "{}", r.describe());
    assert_eq!(
        r.about("first.test")["action"],
        "issued",
        "{}",
        r.describe()
    );
    assert_eq!(r.about("first.test")["deploy_hook"]["status"], "ok");
    assert_eq!(
        r.about("second.test")["action"],
        "issued",
        "{}",
        r.describe()
    );
    let broken = r.about("broken.test");
    assert_eq!(broken["action"], "failed", "{broken}");
    assert_eq!(broken["error"]["class"], "hook", "{broken}");
    assert_eq!(broken["error"]["exit_code"], 9, "{broken}");
    assert!(
        broken["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("port 80 still busy")),
        "{broken}"
    );
    assert_eq!(broken["post_hook"]["status"], "ok", "{broken}");
    let mut lines: Vec<String> = fs::read_to_string(&log)
        .expect("hook log")
        .lines()
        .map(str::to_owned)
        .collect();
    // first's deploy necessarily came before second's (second waited for it).
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("deploy"))
            .cloned()
            .collect::<Vec<_>>(),
        ["deploy first.test", "deploy second.test"]
    );
    lines.retain(|l| l.starts_with("post"));
    assert_eq!(lines, ["post broken.test failed"]);
    // The config is checked: an empty hook and a zero timeout are named.
    let bad = dir.join("bad.toml");
    fs::write(
        &bad,
        "[defaults]\nsolver = \"x\"\nhook_timeout = \"0s\"\n[[certificate]]\ndomains = [\"a.test\"]\npre_hook = \"\"\n",
    )
    .expect("write");
    let r = certsmith(&["config", "check", "--config", p(&bad), "--output", "json"]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(
        r.stdout.contains("defaults.hook_timeout"),
        "{}",
        r.describe()
    );
    assert!(
        r.stdout.contains("certificate[1].pre_hook"),
        "{}",
        r.describe()
    );
}

/// Runs `args` with `--dry-run --dry-run-server` Pebble and JSON output;
/// every line must match docs/json.md.
fn dry_run(pebble: &Pebble, args: &[&str]) -> Run {
    let server = pebble.directory_url();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--dry-run", "--dry-run-server", &server, "--output", "json"]);
    let r = certsmith(&all);
    for v in r.json() {
        if let Err(e) = crate::json_schema::check_dry_run_line(&v) {
            panic!("{e}: {v}\n{}", r.describe());
        }
    }
    r
}

/// Item 9: `--dry-run` for `issue`, `run` and `renew` orders from the
/// `--dry-run-server` (Pebble here), runs no deploy hook, leaves the state
/// directory byte for byte as it was, and reports, naming each
/// certificate, what a real run would do.
#[test]
fn dry_runs_order_from_the_staging_server_and_store_nothing() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let state = TempState::new().expect("state");
    let dir = state.root().to_owned();
    let deployed = dir.join("deployed");
    let extra = format!(
        r#"
[[certificate]]
domains = ["kept.test"]
deploy_hook = "touch {deployed}"

[[certificate]]
domains = ["fresh.test"]
deploy_hook = "touch {deployed}"
"#,
        deployed = p(&deployed)
    );
    let config = config(&pebble, state.path(), &dir, &extra);
    let c = p(&config);
    // One certificate stored for real (its deploy hook runs then).
    let r = certsmith(&[
        "run",
        "--config",
        c,
        "--cert-name",
        "kept.test",
        "--output",
        "json",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    fs::remove_file(&deployed).expect("the real run deployed");
    let before = snapshot(state.path());
    assert!(
        before.keys().any(|k| k.starts_with("accounts")),
        "{before:?}"
    );

    // run: kept.test would be skipped (not due), fresh.test issued; both
    // are ordered from the dry-run server.
    let orders = orders_in_log(&pebble);
    let r = dry_run(&pebble, &["run", "--config", c]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let kept = r.about("kept.test");
    assert_eq!(kept["would"], "skip", "{kept}");
    assert!(
        kept["reason"]
            .as_str()
            .is_some_and(|w| w.contains("not due")),
        "{kept}"
    );
    assert_eq!(kept["test_order"], "ok", "{kept}");
    assert_eq!(kept["server"], pebble.directory_url());
    let fresh = r.about("fresh.test");
    assert_eq!(fresh["would"], "issue", "{fresh}");
    assert_eq!(fresh["test_order"], "ok", "{fresh}");
    let summary = r.json().pop().expect("summary");
    assert_eq!(summary["summary"]["total"], 2, "{summary}");
    assert_eq!(orders_in_log(&pebble), orders + 2, "both tried for real");

    // renew: the stored certificate, from its lineage.
    let r = dry_run(&pebble, &["renew", "--config", c, "--all"]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.about("kept.test")["test_order"], "ok", "{}", r.describe());
    assert_eq!(r.about("kept.test")["would"], "skip", "{}", r.describe());
    let r = dry_run(
        &pebble,
        &[
            "renew",
            "--config",
            c,
            "--cert-name",
            "kept.test",
            "--force",
        ],
    );
    assert_eq!(r.about("kept.test")["would"], "renew", "{}", r.describe());

    // issue: a new name, and the stored one with a name added (a real
    // issue would refuse it without --expand: the report says so).
    let r = dry_run(
        &pebble,
        &[
            "issue",
            "--solver",
            "challtestsrv",
            "--config",
            c,
            "-d",
            "other.test",
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let v = r.about("other.test");
    assert_eq!(
        (v["would"].as_str(), v["test_order"].as_str()),
        (Some("issue"), Some("ok")),
        "{v}"
    );
    let r = dry_run(
        &pebble,
        &[
            "issue",
            "--solver",
            "challtestsrv",
            "--config",
            c,
            "-d",
            "kept.test",
            "-d",
            "more.kept.test",
        ],
    );
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let v = r.about("kept.test");
    assert_eq!(v["would"], "fail", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|w| w.contains("ordering would replace it")),
        "{v}"
    );

    // Text output names each certificate.
    let server = pebble.directory_url();
    let r = certsmith(&[
        "run",
        "--config",
        c,
        "--dry-run",
        "--dry-run-server",
        &server,
    ]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(
        r.stdout.contains("dry run: test orders from"),
        "{}",
        r.describe()
    );
    for name in ["kept.test", "fresh.test"] {
        assert!(
            r.stdout.lines().any(|l| l == name),
            "{name}: {}",
            r.describe()
        );
    }

    assert_eq!(
        snapshot(state.path()),
        before,
        "the state directory is unchanged"
    );
    assert!(!deployed.exists(), "no deploy hook ran in a dry run");

    // A state directory that does not exist is not created.
    let absent = dir.join("absent");
    let r = dry_run(
        &pebble,
        &[
            "issue",
            "--solver",
            "challtestsrv",
            "--config",
            c,
            "--state-dir",
            p(&absent),
            "-d",
            "new.test",
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(!absent.exists(), "{}", r.describe());

    // Bad input: no staging directory is known for Pebble; the server
    // flag needs --dry-run.
    let r = certsmith(&[
        "issue",
        "--solver",
        "challtestsrv",
        "--config",
        c,
        "-d",
        "a.test",
        "--dry-run",
    ]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stderr.contains("--dry-run-server"), "{}", r.describe());
    let r = certsmith(&["run", "--config", c, "--dry-run-server", &server]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stderr.contains("--dry-run"), "{}", r.describe());
    assert_eq!(
        snapshot(state.path()),
        before,
        "the state directory is unchanged"
    );
}

/// Item 7: one certificate, two names, two webroot directories served by
/// two web servers (one per name: the CA finds each name's file only in its
/// own directory): named instances of one plugin (`[solvers.<name>]` with
/// `plugin = "webroot"`), chosen per name by `--solver NAME=CODE` and by a
/// certificate's `solvers` map; `renew` answers each name the same way
/// again; names without a solver are refused, naming them.
#[test]
fn two_webroot_directories_in_one_certificate() {
    use certsmith_tests::static_server::StaticServer;
    use std::net::Ipv4Addr;
    // No authorization reused: the renewal answers every challenge again.
    let pebble = Pebble::start(PebbleOpts {
        env: vec![("PEBBLE_AUTHZREUSE".to_owned(), "0".to_owned())],
        ..PebbleOpts::default()
    })
    .expect("start Pebble");
    let cts = pebble.challtestsrv().expect("challtestsrv");
    let state = TempState::new().expect("state");
    let dir = state.root().to_owned();
    let (root1, root2) = (dir.join("www1"), dir.join("www2"));
    fs::create_dir_all(&root1).expect("mkdir");
    fs::create_dir_all(&root2).expect("mkdir");
    let second = Ipv4Addr::new(127, 0, 0, 2);
    for name in ["one.test", "cfg-one.test"] {
        cts.add_a(name, Ipv4Addr::LOCALHOST).expect("A record");
    }
    for name in ["two.test", "cfg-two.test"] {
        cts.add_a(name, second).expect("A record");
    }
    let web1 = StaticServer::start_on(&root1, Ipv4Addr::LOCALHOST, pebble.http_port())
        .expect("web server 1");
    let web2 = StaticServer::start_on(&root2, second, pebble.http_port()).expect("web server 2");
    let extra = format!(
        r#"
[solvers.web1]
plugin = "webroot"
path = "{root1}"

[solvers.web2]
plugin = "webroot"
path = "{root2}"

[[certificate]]
domains = ["cfg-one.test", "cfg-two.test"]
solvers = {{ "cfg-one.test" = "web1", "cfg-two.test" = "web2" }}
"#,
        root1 = p(&root1),
        root2 = p(&root2),
    );
    let config = config(&pebble, state.path(), &dir, &extra);
    let c = p(&config);

    let r = certsmith(&[
        "issue",
        "--config",
        c,
        "-d",
        "one.test",
        "-d",
        "two.test",
        "--solver",
        "web1",
        "--solver",
        "two.test=web2",
        "--output",
        "json",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.about("one.test")["action"], "issued", "{}", r.describe());
    let served = |log: &str| {
        log.lines()
            .filter(|l| l.contains("acme-challenge") && l.contains(" 200 "))
            .count()
    };
    assert!(
        served(&web1.log()) >= 1,
        "web server 1 served one.test: {}",
        web1.log()
    );
    assert!(
        served(&web2.log()) >= 1,
        "web server 2 served two.test: {}",
        web2.log()
    );
    let lineage =
        fs::read_to_string(state.path().join("certs/one.test/lineage.toml")).expect("lineage");
    assert!(lineage.contains("[name_solvers.\"two.test\"]"), "{lineage}");
    assert!(lineage.contains(p(&root2)), "{lineage}");
    // Both directories are clean again.
    for root in [&root1, &root2] {
        let left = fs::read_dir(root.join(".well-known/acme-challenge"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "{}", root.display());
    }

    // renew answers each name from its recorded solver.
    let before2 = served(&web2.log());
    let r = certsmith(&[
        "renew",
        "--config",
        c,
        "--cert-name",
        "one.test",
        "--force",
        "--output",
        "json",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.about("one.test")["action"], "renewed", "{}", r.describe());
    assert!(served(&web2.log()) > before2, "{}", web2.log());

    // run: the certificate's solvers map.
    let r = certsmith(&[
        "run",
        "--config",
        c,
        "--cert-name",
        "cfg-one.test",
        "--output",
        "json",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(
        r.about("cfg-one.test")["action"],
        "issued",
        "{}",
        r.describe()
    );

    // Bad input, each named with its fix, before any order.
    let orders = orders_in_log(&pebble);
    let r = certsmith(&[
        "issue",
        "--config",
        c,
        "-d",
        "one.test",
        "-d",
        "three.test",
        "--solver",
        "one.test=web1",
        "--output",
        "json",
    ]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(
        r.stderr.contains("no solver for 'three.test'"),
        "{}",
        r.describe()
    );
    assert!(
        r.stderr.contains("--solver three.test=CODE"),
        "{}",
        r.describe()
    );
    let r = certsmith(&[
        "issue",
        "--config",
        c,
        "-d",
        "one.test",
        "--solver",
        "web1",
        "--solver",
        "other.test=web2",
    ]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(
        r.stderr
            .contains("'other.test' is not one of the -d/--domain names"),
        "{}",
        r.describe()
    );
    let r = certsmith(&[
        "issue",
        "--config",
        c,
        "-d",
        "one.test",
        "--solver",
        "web1",
        "--solver-opt",
        "web9:path=/x",
    ]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(
        r.stderr.contains("no --solver uses 'web9'"),
        "{}",
        r.describe()
    );
    let r = certsmith(&[
        "issue",
        "--config",
        c,
        "-d",
        "one.test",
        "-d",
        "two.test",
        "--solver",
        "one.test=web1",
        "--solver",
        "two.test=web2",
        "--solver-opt",
        "path=/x",
    ]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stderr.contains("which solver?"), "{}", r.describe());
    assert!(r.stderr.contains("SOLVER:KEY=VALUE"), "{}", r.describe());
    assert_eq!(orders_in_log(&pebble), orders, "nothing ordered");
    let bad = dir.join("bad.toml");
    fs::write(
        &bad,
        "[solvers.w]\nplugin = 3\n[[certificate]]\ndomains = [\"a.test\", \"b.test\"]\nsolvers = { \"a.test\" = \"webroot\", \"c.test\" = \"webroot\" }\n",
    )
    .expect("write");
    let r = certsmith(&["config", "check", "--config", p(&bad), "--output", "json"]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    for key in [
        "solvers.w.plugin",
        "certificate[1].solvers.\\\"c.test\\\"",
        "certificate[1].solver",
    ] {
        assert!(r.stdout.contains(key), "{key}: {}", r.describe());
    }
    assert!(
        r.stdout.contains("no solver for 'b.test'"),
        "{}",
        r.describe()
    );
}

/// Item 7: one certificate mixing dns-01 (rfc2136 into BIND9) for the
/// wildcard with http-01 (webroot) for another name.
#[test]
fn a_wildcard_through_rfc2136_and_a_name_through_webroot() {
    use certsmith_tests::static_server::StaticServer;
    use certsmith_tests::{Bind, ZoneSpec};
    let bind = Bind::start_resolving(&[ZoneSpec::new("mixed.test").record("www IN A 127.0.0.1")])
        .expect("start BIND9");
    let pebble = Pebble::start(PebbleOpts {
        dns_server: Some(bind.addr()),
        ..PebbleOpts::default()
    })
    .expect("start Pebble");
    let state = TempState::new().expect("state");
    let root = state.root().join("www");
    fs::create_dir_all(&root).expect("mkdir");
    let web = StaticServer::start(&root, pebble.http_port()).expect("web server");
    let a = bind.addr().to_string();
    let server = pebble.directory_url();
    let out = Command::new(certsmith_bin())
        .args([
            "issue",
            "-d",
            "*.mixed.test",
            "-d",
            "www.mixed.test",
            "--solver",
            "webroot",
            "--solver",
            "*.mixed.test=rfc2136",
            "--solver-opt",
            &format!("webroot:path={}", p(&root)),
            "--solver-opt",
            &format!("rfc2136:server={a}"),
            "--solver-opt",
            &format!("rfc2136:tsig_key_name={}", bind.tsig_key_name()),
            "--dns-resolver",
            &a,
            "--propagation-server",
            &a,
            "--server",
            &server,
            "--ca-cert",
            p(pebble.ca_cert_path()),
            "--state-dir",
            p(state.path()),
            "--agree-tos",
            "--output",
            "json",
        ])
        .env_remove("CERTSMITH_PLUGIN_PATH")
        .env("RFC2136_TSIG_SECRET", bind.tsig_secret_b64())
        .stdin(Stdio::null())
        .output()
        .expect("run certsmith");
    let r = Run::from(out);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let v = r.about("_.mixed.test");
    assert_eq!(
        v["domains"],
        serde_json::json!(["*.mixed.test", "www.mixed.test"]),
        "{v}"
    );
    r.line_of(&["*.mixed.test", "dns-01 response in place"]);
    r.line_of(&["www.mixed.test", "http-01 response in place"]);
    assert!(web.log().contains("acme-challenge"), "{}", web.log());
    assert!(
        bind.query_txt("_acme-challenge.mixed.test")
            .expect("query")
            .is_empty(),
        "the TXT record was removed"
    );
    let lineage =
        fs::read_to_string(state.path().join("certs/_.mixed.test/lineage.toml")).expect("lineage");
    assert!(
        lineage.contains("[name_solvers.\"*.mixed.test\"]")
            && lineage.contains("solver = \"rfc2136\""),
        "{lineage}"
    );
}
