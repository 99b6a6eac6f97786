//! What a new user meets first, through the built binary: `--help` (global
//! options under their own heading, each with its `CERTSMITH_*` variable,
//! and examples, in every command), options from the environment and
//! warnings about mistyped variables, where the config file is found,
//! `list` as a table or tab-separated lines, and read-only commands that
//! create nothing.
//!
//! Every run gets a clean environment: no `CERTSMITH_*` variable of the
//! caller, no `XDG_CONFIG_HOME` or `COLUMNS`, and `HOME` in the test's
//! temporary directory, so that no config file of the machine's user is
//! found. (`/etc/certsmith/certsmith.toml` cannot be hidden: the tests
//! expect it not to exist, as on a build machine.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin};
use serde_json::Value;

const SYSTEM_CONFIG: &str = "/etc/certsmith/certsmith.toml";

/// The global options, as their help lines start.
const GLOBAL_OPTIONS: [&str; 6] = [
    "--config",
    "--state-dir",
    "--plugin-dir",
    "--output",
    "-v, --verbose",
    "-q, --quiet",
];

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).replace('\r', ""),
            stderr: String::from_utf8_lossy(&o.stderr).replace('\r', ""),
        }
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "{}", self.describe());
        self
    }

    fn fails(self, code: i32) -> Run {
        assert_eq!(self.code, Some(code), "{}", self.describe());
        self
    }

    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", self.describe()))
            })
            .collect()
    }
}

/// A command in a clean environment whose home is `home`.
fn clean(program: impl AsRef<std::ffi::OsStr>, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CERTSMITH_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("XDG_CONFIG_HOME")
        .env_remove("COLUMNS")
        .env("HOME", home)
        .stdin(Stdio::null());
    cmd
}

/// `certsmith args` with `envs` in a clean environment whose home is `home`.
fn certsmith(home: &Path, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = clean(certsmith_bin(), home);
    cmd.args(args).envs(envs.iter().copied());
    Run::from(cmd.output().expect("run certsmith"))
}

/// `shell` run by `script` on a pseudo-terminal (so certsmith's stdout is a
/// terminal), in a clean environment.
fn on_terminal(home: &Path, shell: &str) -> Run {
    let mut cmd = clean("script", home);
    cmd.args(["-qec", shell, "/dev/null"]);
    Run::from(
        cmd.output()
            .expect("script (util-linux) must be installed: apt-get install bsdutils"),
    )
}

fn p(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    fs::write(path, text).expect("write");
}

// --------------------------------------------------------------- help ---

/// The commands listed under "Commands:" in `help` (without `help`).
fn commands_in(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// The lines of the section under `heading` (up to the next blank line).
fn section<'a>(help: &'a str, heading: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|l| *l != heading)
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect()
}

/// Option lines ("  -x, --xyz ..." or "      --xyz ...").
fn options(lines: &[&str]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.trim_start().starts_with('-'))
        .map(|l| l.trim_start().to_owned())
        .collect()
}

#[test]
fn every_command_help_has_global_options_with_variables_and_examples() {
    let home = TempState::new().expect("temp");
    let help = |cmd: &[String], flag: &str| {
        let mut args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        args.push(flag);
        certsmith(home.root(), &args, &[]).ok().stdout
    };
    // Every command and subcommand, found from the help itself, so that a
    // new command is checked without changing this test.
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    let mut seen = Vec::new();
    while let Some(cmd) = todo.pop() {
        let text = help(&cmd, "--help");
        let name = format!("certsmith {}", cmd.join(" "));
        assert_eq!(text, help(&cmd, "-h"), "`{name} -h` and `--help` differ");
        for sub in commands_in(&text) {
            let mut next = cmd.clone();
            next.push(sub);
            todo.push(next);
        }

        let global = section(&text, "Global options:");
        let global_opts = options(&global);
        for want in GLOBAL_OPTIONS {
            assert!(
                global_opts.iter().any(|o| o.starts_with(want)),
                "`{name} --help` has no {want} under \"Global options:\":\n{text}"
            );
        }
        for line in &global_opts {
            if line.starts_with("-h, --help") {
                continue;
            }
            assert!(
                line.contains("[env: CERTSMITH_"),
                "`{name} --help`: a global option without its variable: {line}"
            );
        }
        let own = options(&section(&text, "Options:"));
        for want in GLOBAL_OPTIONS {
            assert!(
                !own.iter().any(|o| o.starts_with(want)),
                "`{name} --help` lists {want} among its own options:\n{text}"
            );
        }
        let examples = section(&text, "Examples:");
        assert!(
            examples
                .iter()
                .any(|l| l.trim_start().starts_with("certsmith ")),
            "`{name} --help` has no Examples section with a command:\n{text}"
        );
        seen.push((cmd, text));
    }
    let names: Vec<String> = seen.iter().map(|(c, _)| c.join(" ")).collect();
    for want in [
        "issue",
        "run",
        "renew",
        "revoke",
        "list",
        "account show",
        "account rollover",
        "config check",
        "solvers list",
        "solvers info",
        "plugin check",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} not checked: {names:?}"
        );
    }

    // The common options of `issue` have their variables too.
    let (_, issue) = seen
        .iter()
        .find(|(c, _)| c.as_slice() == ["issue"])
        .expect("issue");
    let own = options(&section(issue, "Options:"));
    for (option, var) in [
        ("--server", "CERTSMITH_SERVER"),
        ("--email", "CERTSMITH_EMAIL"),
        ("--agree-tos", "CERTSMITH_AGREE_TOS"),
        ("--ca-cert", "CERTSMITH_CA_CERT"),
        ("--key-type", "CERTSMITH_KEY_TYPE"),
        ("--solver ", "CERTSMITH_SOLVER"),
        ("--eab-kid", "CERTSMITH_EAB_KID"),
        ("--eab-hmac-key", "CERTSMITH_EAB_HMAC_KEY"),
    ] {
        let line = own
            .iter()
            .find(|l| l.starts_with(option))
            .unwrap_or_else(|| panic!("issue has no {option}:\n{issue}"));
        assert!(
            line.contains(&format!("[env: {var}")),
            "issue {option} does not show {var}: {line}"
        );
    }
}

// --------------------------------------------------------- environment ---

#[test]
fn unknown_certsmith_variables_are_named_with_the_nearest_known_one() {
    let home = TempState::new().expect("temp");
    let h = home.root();
    let r = certsmith(h, &["solvers", "list"], &[("CERTSMITH_SERVR", "x")]).ok();
    assert!(
        r.stderr.contains(
            "warning: CERTSMITH_SERVR is not a certsmith variable; did you mean CERTSMITH_SERVER?"
        ),
        "{}",
        r.describe()
    );
    // Also when the command line is wrong (the variable may be why).
    let r = certsmith(h, &["issue"], &[("CERTSMITH_SOLVR", "standalone")]).fails(2);
    assert!(
        r.stderr.contains("did you mean CERTSMITH_SOLVER?"),
        "{}",
        r.describe()
    );
    // -q keeps warnings (it drops progress only).
    let r = certsmith(h, &["solvers", "list", "-q"], &[("CERTSMITH_SERVR", "x")]).ok();
    assert!(
        r.stderr.contains("warning: CERTSMITH_SERVR"),
        "{}",
        r.describe()
    );
    // Variables certsmith reads, sets for hooks, or its tests read.
    let r = certsmith(
        h,
        &["solvers", "list"],
        &[
            ("CERTSMITH_CERT_NAME", "x"),
            ("CERTSMITH_FULLCHAIN", "x"),
            ("CERTSMITH_EAB_HMAC_KEY_FILE", "/nonexistent"),
            ("CERTSMITH_PLUGIN_PATH", "/nonexistent"),
            ("CERTSMITH_TEST_KEEP", "1"),
            ("CERTSMITH_BLESS", "1"),
            ("CERTSMITH_EMAIL", "a@example.com"),
        ],
    )
    .ok();
    assert!(!r.stderr.contains("warning"), "{}", r.describe());
}

#[test]
fn global_options_come_from_the_environment_and_the_command_line_wins() {
    let tmp = TempState::new().expect("temp");
    let h = tmp.root();
    let state = p(tmp.path());
    let r = certsmith(
        h,
        &["solvers", "list"],
        &[("CERTSMITH_OUTPUT", "json"), ("CERTSMITH_STATE_DIR", state)],
    )
    .ok();
    assert!(r.json_lines()[0]["solvers"].is_array(), "{}", r.describe());
    let r = certsmith(
        h,
        &["solvers", "list", "--output", "text"],
        &[("CERTSMITH_OUTPUT", "json")],
    )
    .ok();
    assert!(!r.stdout.trim_start().starts_with('{'), "{}", r.describe());
    let r = certsmith(h, &["list"], &[("CERTSMITH_STATE_DIR", state)]).ok();
    assert!(
        r.stdout.contains(&format!("no certificates in {state}")),
        "{}",
        r.describe()
    );

    // -q and -v: on the command line they conflict; a variable gives way.
    let conf = tmp.file("c.toml");
    write(&conf, &format!("[defaults]\nstate_dir = \"{state}\"\n"));
    let args = ["list", "--config", p(&conf)];
    let r = certsmith(h, &args, &[("CERTSMITH_QUIET", "1")]).ok();
    assert!(r.stderr.is_empty(), "{}", r.describe());
    let r = certsmith(
        h,
        &[&args[..], &["-v"]].concat(),
        &[("CERTSMITH_QUIET", "1")],
    )
    .ok();
    assert!(r.stderr.contains("using config"), "{}", r.describe());
    let r = certsmith(
        h,
        &[&args[..], &["-q"]].concat(),
        &[("CERTSMITH_VERBOSE", "2")],
    )
    .ok();
    assert!(r.stderr.is_empty(), "{}", r.describe());
    certsmith(h, &[&args[..], &["-q", "-v"]].concat(), &[]).fails(2);
}

// ------------------------------------------------------------- config ---

/// A config whose state directory is `state` (created), with one
/// certificate for the standalone solver.
fn config_for(path: &Path, state: &Path) {
    fs::create_dir_all(state).expect("mkdir state");
    write(
        path,
        &format!(
            "[defaults]\nstate_dir = \"{}\"\n\n[[certificate]]\ndomains = [\"x.example.test\"]\nsolver = \"standalone\"\n",
            p(state)
        ),
    );
}

#[test]
fn the_config_is_found_in_order_and_named() {
    let tmp = TempState::new().expect("temp");
    let home = tmp.file("home");
    let xdg = tmp.file("xdg");
    let home_conf = home.join(".config/certsmith/certsmith.toml");
    let xdg_conf = xdg.join("certsmith/certsmith.toml");
    let env_conf = tmp.file("env.toml");
    let flag_conf = tmp.file("flag.toml");
    for (conf, state) in [
        (&home_conf, "s-home"),
        (&xdg_conf, "s-xdg"),
        (&env_conf, "s-env"),
        (&flag_conf, "s-flag"),
    ] {
        config_for(conf, &tmp.file(state));
    }
    let h = home.as_path();
    let xdg_s = p(&xdg);
    let uses = |r: &Run, conf: &Path, origin: &str, state: &str| {
        assert!(
            r.stderr.contains(&format!(
                "[certsmith] using config {} ({origin})",
                conf.display()
            )),
            "{}",
            r.describe()
        );
        assert!(
            r.stdout
                .contains(&format!("no certificates in {}", p(&tmp.file(state)))),
            "{}",
            r.describe()
        );
    };

    // ~/.config without XDG_CONFIG_HOME (or with a relative one, which the
    // XDG specification says to ignore).
    let r = certsmith(h, &["list"], &[]).ok();
    uses(&r, &home_conf, "the user default", "s-home");
    let r = certsmith(h, &["list"], &[("XDG_CONFIG_HOME", "relative/dir")]).ok();
    uses(&r, &home_conf, "the user default", "s-home");
    // $XDG_CONFIG_HOME over ~/.config.
    let r = certsmith(h, &["list"], &[("XDG_CONFIG_HOME", xdg_s)]).ok();
    uses(&r, &xdg_conf, "the user default", "s-xdg");
    // CERTSMITH_CONFIG over the defaults, --config over everything.
    let env = [
        ("XDG_CONFIG_HOME", xdg_s),
        ("CERTSMITH_CONFIG", p(&env_conf)),
    ];
    let r = certsmith(h, &["list"], &env).ok();
    uses(&r, &env_conf, "from CERTSMITH_CONFIG", "s-env");
    let r = certsmith(h, &["list", "--config", p(&flag_conf)], &env).ok();
    uses(&r, &flag_conf, "from --config", "s-flag");
    // -q: no line.
    let r = certsmith(h, &["list", "-q"], &env).ok();
    assert!(r.stderr.is_empty(), "{}", r.describe());

    // renew and config check find it the same way.
    let r = certsmith(h, &["renew", "--all"], &[("XDG_CONFIG_HOME", xdg_s)]).ok();
    assert!(
        r.stderr.contains(&format!(
            "using config {} (the user default)",
            xdg_conf.display()
        )) && r.stderr.contains("no certificates in"),
        "{}",
        r.describe()
    );
    let r = certsmith(h, &["config", "check"], &[("XDG_CONFIG_HOME", xdg_s)]).ok();
    assert!(
        r.stdout
            .contains(&format!("{}: OK, 1 certificate(s)", xdg_conf.display())),
        "{}",
        r.describe()
    );

    // No config anywhere: `run` and `config check` say where they looked.
    let empty_home = tmp.file("empty-home");
    fs::create_dir_all(&empty_home).expect("mkdir");
    for cmd in [&["run"][..], &["config", "check"][..]] {
        let r = certsmith(&empty_home, cmd, &[]).fails(2);
        let user = empty_home.join(".config/certsmith/certsmith.toml");
        assert!(
            r.stderr.contains(&format!(
                "needs a config file: none was given (--config, CERTSMITH_CONFIG) and none exists at {} or {SYSTEM_CONFIG}",
                user.display()
            )),
            "{}",
            r.describe()
        );
        assert!(
            r.stderr
                .contains("hint: pass --config FILE, set CERTSMITH_CONFIG"),
            "{}",
            r.describe()
        );
    }
    let r = certsmith(&empty_home, &["run", "--output", "json"], &[]).fails(2);
    assert_eq!(
        r.json_lines()[0]["error"]["class"],
        "usage",
        "{}",
        r.describe()
    );
    // A named file that does not exist is an error, not a fall-through.
    let missing = tmp.file("missing.toml");
    let r = certsmith(h, &["run"], &[("CERTSMITH_CONFIG", p(&missing))]).fails(2);
    assert!(
        r.stderr.contains(&format!(
            "using config {} (from CERTSMITH_CONFIG)",
            missing.display()
        )) && r.stderr.contains("missing.toml"),
        "{}",
        r.describe()
    );
}

// ----------------------------------------------------------- read-only ---

/// Every file and directory under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let path = e.expect("entry").path();
            out.push(path.strip_prefix(dir).expect("under dir").to_path_buf());
            if path.is_dir() {
                todo.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn read_only_commands_create_nothing() {
    let tmp = TempState::new().expect("temp");
    let h = tmp.root();
    let typo = tmp.file("stat-dir");
    let typo_s = p(&typo);

    let sync_to = tmp.file("web");
    for cmd in [
        &["list"][..],
        &["account", "show"][..],
        &["sync", "--to", p(&sync_to)][..],
    ] {
        let args = [cmd, &["--state-dir", typo_s]].concat();
        let r = certsmith(h, &args, &[]).fails(2);
        assert!(
            r.stderr
                .contains(&format!("error: state directory {typo_s} does not exist")),
            "{}",
            r.describe()
        );
        assert!(
            r.stderr.contains("hint: check --state-dir"),
            "{}",
            r.describe()
        );
        let r = certsmith(h, &[&args[..], &["--output", "json"]].concat(), &[]).fails(2);
        assert_eq!(
            r.json_lines()[0]["error"]["exit_code"],
            2,
            "{}",
            r.describe()
        );
        // The same through the variable and through the config file.
        certsmith(h, cmd, &[("CERTSMITH_STATE_DIR", typo_s)]).fails(2);
    }
    assert!(
        !sync_to.exists(),
        "sync created its --to for a missing store"
    );
    let conf = tmp.file("certsmith.toml");
    write(
        &conf,
        &format!(
            "[defaults]\nstate_dir = \"{typo_s}\"\n\n[[certificate]]\ndomains = [\"x.example.test\"]\nsolver = \"standalone\"\n"
        ),
    );
    let r = certsmith(h, &["list", "--config", p(&conf)], &[]).fails(2);
    assert!(r.stderr.contains(typo_s), "{}", r.describe());
    certsmith(h, &["config", "check", "--config", p(&conf)], &[]).ok();
    certsmith(h, &["solvers", "list", "--state-dir", typo_s], &[]).ok();
    certsmith(
        h,
        &["solvers", "info", "standalone", "--state-dir", typo_s],
        &[],
    )
    .ok();
    assert!(!typo.exists(), "a read-only command created {typo_s}");

    // An existing, empty state directory stays empty.
    let state = p(tmp.path());
    let r = certsmith(h, &["list", "--state-dir", state], &[]).ok();
    assert!(r.stdout.contains("no certificates in"), "{}", r.describe());
    let r = certsmith(h, &["account", "show", "--state-dir", state], &[]).ok();
    assert!(!r.stdout.is_empty(), "{}", r.describe());
    assert_eq!(tree(tmp.path()), Vec::<PathBuf>::new());
}

// ------------------------------------------- issue, run, list (Pebble) ---

#[test]
fn issue_from_the_environment_then_run_and_list_with_the_user_config() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let tmp = TempState::new().expect("temp");
    let h = tmp.root();
    let state = tmp.path();
    let server = pebble.directory_url();
    let listen = format!("listen=127.0.0.1:{}", pebble.http_port());
    let env = [
        ("CERTSMITH_SERVER", server.as_str()),
        ("CERTSMITH_CA_CERT", p(pebble.ca_cert_path())),
        ("CERTSMITH_EMAIL", "env@example.com"),
        ("CERTSMITH_SOLVER", "standalone"),
        ("CERTSMITH_KEY_TYPE", "ec-p384"),
        ("CERTSMITH_STATE_DIR", p(state)),
        ("CERTSMITH_OUTPUT", "json"),
    ];
    let args = [
        "issue",
        "-d",
        "a.example.test",
        "-d",
        "www.a.example.test",
        "--solver-opt",
        &listen,
    ];
    // Without CERTSMITH_AGREE_TOS the account cannot be created.
    let r = certsmith(h, &args, &env).fails(2);
    assert!(r.stderr.contains("--agree-tos"), "{}", r.describe());
    let env_tos = [&env[..], &[("CERTSMITH_AGREE_TOS", "true")]].concat();
    let r = certsmith(h, &args, &env_tos).ok();
    let v = &r.json_lines()[0];
    assert_eq!(v["key_type"], "ec-p384", "{}", r.describe());
    let lineage =
        fs::read_to_string(state.join("certs/a.example.test/lineage.toml")).expect("lineage");
    assert!(
        lineage.contains(&format!("server = \"{server}\"")),
        "{lineage}"
    );
    assert!(lineage.contains("email = \"env@example.com\""), "{lineage}");

    // `run` with no --config: the user's config, named.
    let xdg = tmp.file("xdg");
    let conf = xdg.join("certsmith/certsmith.toml");
    write(
        &conf,
        &format!(
            r#"[defaults]
server = "{server}"
ca_cert = "{}"
email = "env@example.com"
agree_tos = true
state_dir = "{}"

[solvers.standalone]
listen = ["127.0.0.1:{}"]

[[certificate]]
name = "b"
domains = ["b.example.test"]
solver = "standalone"
"#,
            p(pebble.ca_cert_path()),
            p(state),
            pebble.http_port()
        ),
    );
    let xdg_env = [("XDG_CONFIG_HOME", p(&xdg))];
    // An `issue` variable is not applied to `run`, but said so.
    let run_env = [&xdg_env[..], &[("CERTSMITH_EMAIL", "other@example.com")]].concat();
    let r = certsmith(h, &["run", "--output", "json"], &run_env).ok();
    assert!(
        r.stderr.contains(
            "warning: CERTSMITH_EMAIL is not used by `certsmith run`, which takes `email` from the config file"
        ),
        "{}",
        r.describe()
    );
    assert!(
        r.stderr.contains(&format!(
            "[certsmith] using config {} (the user default)",
            conf.display()
        )),
        "{}",
        r.describe()
    );
    assert!(
        r.json_lines().iter().any(|v| v["name"] == "b"),
        "{}",
        r.describe()
    );

    // `list` to a pipe: a header, then tab-separated lines; domains ", ".
    let r = certsmith(h, &["list"], &xdg_env).ok();
    let lines: Vec<Vec<&str>> = r.stdout.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        lines[0],
        [
            "NAME",
            "STATE",
            "NOT AFTER",
            "DAYS",
            "NEXT RENEWAL (WHY)",
            "SOLVER",
            "ISSUER",
            "DOMAINS"
        ],
        "{}",
        r.describe()
    );
    assert_eq!(lines.len(), 3, "{}", r.describe());
    let a = lines
        .iter()
        .find(|l| l[0] == "a.example.test")
        .expect("a row");
    assert_eq!(a[7], "a.example.test, www.a.example.test");
    assert_eq!(a[1], "valid");
    assert!(a[6].starts_with("Pebble Intermediate CA"), "{a:?}");
    assert!(lines.iter().all(|l| l.len() == 8), "{}", r.describe());

    // On a terminal: aligned columns that fit its width, from the terminal
    // itself (TIOCGWINSZ) or from COLUMNS, which wins.
    let bin = p(&certsmith_bin()).to_owned();
    let list = format!("{bin} list --state-dir {}", p(state));
    let r = on_terminal(h, &format!("stty cols 70 rows 24; env -u COLUMNS {list}")).ok();
    let rows: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(rows.len(), 3, "{}", r.describe());
    assert!(rows[0].starts_with("NAME "), "{}", r.describe());
    assert!(!r.stdout.contains('\t'), "{}", r.describe());
    assert!(
        rows.iter().all(|l| l.chars().count() <= 70),
        "wider than the terminal:\n{}",
        r.stdout
    );
    let col = rows[0].find("STATE").expect("STATE column");
    assert!(
        rows[1..].iter().all(|l| l[col..].starts_with("valid")),
        "STATE not aligned:\n{}",
        r.stdout
    );
    let r = on_terminal(h, &format!("stty cols 70 rows 24; COLUMNS=200 {list}")).ok();
    assert!(
        r.stdout.contains("ISSUER") && r.stdout.contains("a.example.test, www.a.example.test"),
        "COLUMNS=200 leaves room for every column:\n{}",
        r.stdout
    );
    assert!(
        r.stdout.lines().any(|l| l.chars().count() > 70),
        "{}",
        r.stdout
    );
}
