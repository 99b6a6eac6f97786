//! The config module's unit tests: every error keeps its line, column,
//! key and hint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::keys::KeyType;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, Path::new("/etc/certsmith/certsmith.toml"))
}

fn one_error(text: &str) -> ConfigError {
    let mut e = parse(text).expect_err("must fail").errors;
    assert_eq!(e.len(), 1, "{e:?}");
    e.remove(0)
}

const GOOD: &str = r#"
[defaults]
server = "https://localhost:14000/dir"
email = "admin@example.com"
agree_tos = true
key_type = "ec-p384"
plugin_dirs = ["plugins"]
concurrency = 3
renew_before = "30d"
propagation_servers = ["127.0.0.1:8053"]

[solvers.standalone]
listen = "127.0.0.1:5002"

[[certificate]]
domains = ["A.example.com", "www.a.example.com", "a.example.com"]
solver = "standalone"

[[certificate]]
name = "b"
domains = ["b.example.com"]
solver = "standalone"
solver_options = { listen = "127.0.0.1:5003" }
key_type = "rsa2048"
renew_before = "1d12h"
deploy_hook = "true"
"#;

#[test]
fn a_good_file() {
    let c = parse(GOOD).expect("valid");
    assert_eq!(
        c.defaults.server.as_deref(),
        Some("https://localhost:14000/dir")
    );
    assert_eq!(
        c.defaults.plugin_dirs,
        [PathBuf::from("/etc/certsmith/plugins")]
    );
    assert_eq!(c.defaults.concurrency, Some(3));
    assert_eq!(
        c.defaults.renew_before,
        Some(Duration::from_secs(30 * 86_400))
    );
    assert_eq!(c.defaults.propagation_servers.len(), 1);
    assert_eq!(c.certificates.len(), 2);
    let a = &c.certificates[0];
    assert_eq!(a.name, "a.example.com");
    assert_eq!(a.domain_names(), ["a.example.com", "www.a.example.com"]);
    assert_eq!(a.key_type, KeyType::EcP384);
    let b = &c.certificates[1];
    assert_eq!(b.key_type, KeyType::Rsa2048);
    assert_eq!(b.renew_before, Some(Duration::from_secs(36 * 3600)));
    assert_eq!(
        c.solver_table(b).get("listen").and_then(|v| v.as_str()),
        Some("127.0.0.1:5003")
    );
    assert_eq!(
        c.solver_table(a).get("listen").and_then(|v| v.as_str()),
        Some("127.0.0.1:5002")
    );
    let (pos, key) = c.option_pos(b, "listen");
    assert_eq!(key, "certificate[2].solver_options.listen");
    assert_eq!(pos.line, 23);
    let (pos, key) = c.option_pos(a, "listen");
    assert_eq!(key, "solvers.standalone.listen");
    assert_eq!(
        pos,
        Pos {
            line: 13,
            column: 1
        }
    );
    assert_eq!(c.deploy_hook(b).as_deref(), Some("true"));
}

#[test]
fn malformed_toml_names_line_and_column() {
    let e = one_error("[defaults]\nserver = \"x\n");
    let s = e.to_string();
    assert!(s.starts_with("/etc/certsmith/certsmith.toml:2:"), "{s}");
    assert!(matches!(e, ConfigError::Syntax { .. }));
}

#[test]
fn an_unclosed_array_is_blamed_on_its_key() {
    let e = one_error("[[certificate]]\ndomains = [\"a.test\"\nsolver = \"x\"\n");
    assert_eq!(e.key(), Some("certificate[1].domains"), "{e}");
    assert_eq!(e.pos(), Some(Pos { line: 3, column: 1 }));
    assert!(e.hint().is_some_and(|h| h.contains("syntax")), "{e:?}");
    let e = one_error("[defaults]\nemail = \"a@b.c\nagree_tos = true\n");
    assert_eq!(e.key(), Some("defaults.email"), "{e}");
}

#[test]
fn unknown_key_suggests_the_nearest() {
    let e = one_error("[[certificate]]\ndomain = [\"a.example\"]\nsolver = \"x\"\n");
    let s = e.to_string();
    assert!(
        s.contains(":2:1: certificate[1].domain: unknown key `domain`"),
        "{s}"
    );
    assert!(s.contains("did you mean `domains`?"), "{s}");
    let e = one_error("[defaults]\nemial = \"a@b.c\"\n");
    assert_eq!(e.key(), Some("defaults.emial"));
    assert!(e.to_string().contains("did you mean `email`"), "{e}");
    assert_eq!(e.pos(), Some(Pos { line: 2, column: 1 }));
}

#[test]
fn wrong_type_names_the_key() {
    let e = one_error("[[certificate]]\nsolver = \"x\"\ndomains = \"a.example\"\n");
    assert_eq!(e.key(), Some("certificate[1].domains"), "{e}");
    assert_eq!(e.pos().map(|p| p.line), Some(3));
    assert!(e.hint().is_some_and(|h| h.contains("list")), "{e:?}");
    let e = one_error("[defaults]\nagree_tos = \"yes\"\n");
    assert_eq!(e.key(), Some("defaults.agree_tos"), "{e}");
}

#[test]
fn missing_domains() {
    let e = one_error("[[certificate]]\nsolver = \"x\"\n");
    assert_eq!(e.key(), Some("certificate[1].domains"), "{e}");
    assert!(e.to_string().contains("missing key `domains`"), "{e}");
}

#[test]
fn semantic_errors_are_all_reported_with_positions() {
    let text = r#"
[defaults]
server = "http://insecure.example/dir"
email = "not-an-email"
renew_before = "30 days"
key_type = "ec-p521"

[[certificate]]
domains = ["ok.example", "bad..example"]
solver = "standalone"

[[certificate]]
name = "dup"
domains = ["c.example"]
solver = "standalone"

[[certificate]]
name = "dup"
domains = ["d.example"]
solver = "standalone"
"#;
    let errors = parse(text).expect_err("invalid").errors;
    let keys: Vec<(String, usize)> = errors
        .iter()
        .map(|e| {
            (
                e.key().unwrap_or("").to_owned(),
                e.pos().map_or(0, |p| p.line),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("defaults.server".to_owned(), 3),
            ("defaults.email".to_owned(), 4),
            ("defaults.renew_before".to_owned(), 5),
            ("defaults.key_type".to_owned(), 6),
            ("certificate[1].domains".to_owned(), 9),
            ("certificate[3].name".to_owned(), 17),
        ],
        "{errors:#?}"
    );
    let kt = &errors[3];
    assert!(
        kt.to_string().contains("unknown key type 'ec-p521'"),
        "{kt}"
    );
    assert!(kt.hint().is_some_and(|h| h.contains("ec-p384")), "{kt:?}");
    let dom = &errors[4];
    assert_eq!(dom.pos().map(|p| p.column), Some(26), "{dom}");
    assert!(dom.to_string().contains("bad..example"), "{dom}");
}

#[test]
fn solver_from_defaults_or_error() {
    let c = parse("[defaults]\nsolver = \"webroot\"\n[[certificate]]\ndomains = [\"a.example\"]\n")
        .expect("valid");
    assert_eq!(c.certificates[0].solver, "webroot");
    assert_eq!(
        c.certificates[0].solver_pos,
        Pos {
            line: 2,
            column: 10
        }
    );
    let e = one_error("[[certificate]]\ndomains = [\"a.example\"]\n");
    assert_eq!(e.key(), Some("certificate[1].solver"));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
    assert_eq!(parse_duration("1d12h"), Ok(Duration::from_secs(36 * 3600)));
    assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
    assert!(parse_duration("30").is_err());
    assert!(parse_duration("d").is_err());
    assert!(parse_duration("3x").is_err());
    assert!(parse_duration("").is_err());
    assert_eq!(format_duration(Duration::from_secs(36 * 3600)), "1d12h");
    assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
}

#[test]
fn secrets_are_not_in_debug() {
    let c = parse(
            "[defaults]\neab_kid = \"kid\"\neab_hmac_key = \"c2VjcmV0\"\n[solvers.cf]\napi_token = \"hunter2\"\n",
        )
        .expect("valid");
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("c2VjcmV0") && !dbg.contains("hunter2"),
        "{dbg}"
    );
    assert!(dbg.contains("api_token"), "{dbg}");
}

#[test]
fn top_level_plugin_dirs_still_accepted() {
    let c = parse("plugin_dirs = [\"/opt/p\"]\n").expect("valid");
    assert_eq!(c.defaults.plugin_dirs, [PathBuf::from("/opt/p")]);
}

/// `(key, line:column)` of every error, in order.
fn keys_and_positions(text: &str) -> Vec<(String, String)> {
    parse(text)
        .expect_err("must fail")
        .errors
        .iter()
        .map(|e| {
            (
                e.key().unwrap_or("").to_owned(),
                e.pos().map(|p| p.to_string()).unwrap_or_default(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(k, p)| ((*k).to_owned(), (*p).to_owned()))
        .collect()
}

#[test]
fn structural_errors_are_all_reported_in_file_order() {
    let text = "[defaults]\nserver = 1\nemial = \"a@b.c\"\nfollow_cname = \"no\"\n\
                [[certificate]]\ndomains = [\"a.test\", 3]\nsolver = \"x\"\n";
    assert_eq!(
        keys_and_positions(text),
        pairs(&[
            ("defaults.server", "2:10"),
            ("defaults.emial", "3:1"),
            ("defaults.follow_cname", "4:16"),
            ("certificate[1].domains", "6:22"),
        ])
    );
}

#[test]
fn wrong_types_say_what_was_found_but_never_the_value() {
    let e = one_error("[defaults]\neab_hmac_key = 123456789\n");
    assert_eq!(e.key(), Some("defaults.eab_hmac_key"));
    assert_eq!(
        e.pos(),
        Some(Pos {
            line: 2,
            column: 16
        })
    );
    let s = e.to_string();
    assert!(
        s.ends_with("invalid type: expected a string, found an integer"),
        "{s}"
    );
    assert!(!s.contains("123456789") && !format!("{e:?}").contains("123456789"));
    let e = one_error("[defaults]\nconcurrency = 4.5\n");
    assert!(
        e.to_string().contains("expected an integer, found a float"),
        "{e}"
    );
    assert_eq!(e.hint(), Some("concurrency is a number such as 4"));
}

#[test]
fn unknown_keys_carry_their_full_path() {
    let e = one_error("[foo]\nx = 1\n");
    assert_eq!(e.key(), Some("foo"));
    assert_eq!(e.pos(), Some(Pos { line: 1, column: 2 }));
    let e = one_error("[defaults.x]\ny = 1\n");
    assert_eq!(e.key(), Some("defaults.x"));
    let e = one_error("certificate = [{ domains = [\"a.test\"], solver = \"x\", bogus = 1 }]\n");
    assert_eq!(e.key(), Some("certificate[1].bogus"));
    assert_eq!(
        e.pos(),
        Some(Pos {
            line: 1,
            column: 54
        })
    );
    // The second certificate is counted as such.
    let e = one_error(
        "[[certificate]]\ndomains = [\"a.test\"]\nsolver = \"x\"\n\
         [[certificate]]\ndomains = [\"b.test\"]\nsolvr = \"x\"\n",
    );
    assert_eq!(e.key(), Some("certificate[2].solvr"));
    assert_eq!(e.hint(), Some("rename `solvr` to `solver`"));
    // A byte-order mark does not hide the table.
    let e = one_error("\u{feff}[defaults]\nemial = \"a@b.c\"\n");
    assert_eq!(e.key(), Some("defaults.emial"));
}

#[test]
fn a_missing_key_is_not_reported_twice() {
    // `domain` is taken for a misspelling of `domains`: one error.
    let e = one_error("[[certificate]]\ndomain = [\"a.test\"]\nsolver = \"x\"\n");
    assert_eq!(e.key(), Some("certificate[1].domain"));
    // An unrelated unknown key does not excuse the missing one.
    assert_eq!(
        keys_and_positions("[[certificate]]\nzzz = 1\nsolver = \"x\"\n"),
        pairs(&[
            ("certificate[1].domains", "1:1"),
            ("certificate[1].zzz", "2:1"),
        ])
    );
}

#[test]
fn tables_of_the_wrong_shape() {
    let e = one_error("[certificate]\ndomains = [\"a.test\"]\nsolver = \"x\"\n");
    assert_eq!(e.key(), Some("certificate"));
    assert!(
        e.hint().is_some_and(|h| h.contains("[[certificate]]")),
        "{e:?}"
    );
    let e = one_error("[solvers]\nx = 1\n");
    assert_eq!(e.key(), Some("solvers.x"));
    assert!(
        e.hint().is_some_and(|h| h.contains("[solvers.CODE]")),
        "{e:?}"
    );
    let e = one_error("defaults = 1\n");
    assert_eq!(e.key(), Some("defaults"));
    assert!(e.hint().is_some_and(|h| h.contains("[defaults]")), "{e:?}");
}

#[test]
fn numbers_out_of_range() {
    let e = one_error("[defaults]\nconcurrency = 99999999999999999999\n");
    assert_eq!(e.key(), Some("defaults.concurrency"));
    assert!(e.to_string().contains("is out of range"), "{e}");
    assert!(matches!(e, ConfigError::Invalid { .. }));
    // A solver option TOML cannot hold is blamed on the option.
    let e = one_error("[solvers.x]\nttl = 99999999999999999999\n");
    assert_eq!(e.key(), Some("solvers.x.ttl"));
    assert_eq!(e.pos(), Some(Pos { line: 2, column: 7 }));
    // Option values may be secrets: not echoed.
    assert!(!e.to_string().contains("99999"), "{e}");
}

#[test]
fn syntax_errors_are_blamed_on_the_key_the_parser_saw() {
    let e = one_error("[defaults]\nagree_tos = true\nagree_tos = false\n");
    assert_eq!(e.key(), Some("defaults.agree_tos"), "{e}");
    assert_eq!(e.pos(), Some(Pos { line: 3, column: 1 }));
    let e = one_error("[[certificate]]\nsolver_options = { a = 1, b = \n");
    assert_eq!(e.key(), Some("certificate[1].solver_options.b"), "{e}");
    let e = one_error("[defaults]\nemail = \"a@b.c\" ; x = 1\n");
    assert_eq!(e.key(), Some("defaults.email"), "{e}");
    // After an unclosed header, no key can be trusted.
    let e = one_error("[defaults\nx = 1\n");
    assert_eq!(e.key(), Some("(file)"), "{e}");
    assert_eq!(
        e.pos(),
        Some(Pos {
            line: 1,
            column: 10
        })
    );
    assert!(e.hint().is_some_and(|h| h.contains("line 1")), "{e:?}");
}

#[test]
fn solver_options_keep_their_values_and_positions() {
    let c = parse(
        "[solvers]\nx = { a = 1, n = { c = [1, 2] } }\n[[certificate]]\n\
         domains = [\"a.test\"]\nsolver = \"x\"\nsolver_options.b = 2\n",
    )
    .expect("valid");
    let x = &c.solvers["x"];
    assert_eq!(x.pos, Pos { line: 2, column: 5 });
    assert_eq!(x.positions["a"], Pos { line: 2, column: 7 });
    assert_eq!(
        x.options
            .get("n")
            .and_then(|n| n.get("c"))
            .map(ToString::to_string),
        Some("[1, 2]".to_owned())
    );
    let cert = &c.certificates[0];
    assert_eq!(
        cert.solver_options.positions["b"],
        Pos {
            line: 6,
            column: 16
        }
    );
    let table = c.solver_table(cert);
    assert_eq!(table.get("a").and_then(toml::Value::as_integer), Some(1));
    assert_eq!(table.get("b").and_then(toml::Value::as_integer), Some(2));
}

#[test]
fn propagation_checks_in_defaults_and_per_certificate() {
    use crate::dns::PropagationCheck;
    let text = "[defaults]\nsolver = \"standalone\"\npropagation_check = \"recursive\"\n\n[[certificate]]\ndomains = [\"a.test\"]\n\n[[certificate]]\ndomains = [\"b.test\"]\npropagation_check = \"wait:30\"\n";
    let c = parse(text).expect("valid");
    assert_eq!(
        c.defaults.propagation_check,
        Some(PropagationCheck::Recursive)
    );
    assert_eq!(
        c.propagation_check(&c.certificates[0]),
        Some(PropagationCheck::Recursive)
    );
    assert_eq!(
        c.propagation_check(&c.certificates[1]),
        Some(PropagationCheck::Wait(Duration::from_secs(30)))
    );
    let c = parse("[[certificate]]\ndomains = [\"a.test\"]\nsolver = \"x\"\n").expect("valid");
    assert_eq!(c.propagation_check(&c.certificates[0]), None);

    let e = one_error(
        "[defaults]\nsolver = \"x\"\n\n[[certificate]]\ndomains = [\"a.test\"]\npropagation_check = \"wait:soon\"\n",
    );
    assert_eq!(e.key(), Some("certificate[1].propagation_check"));
    assert_eq!(e.pos().map(|p| (p.line, p.column)), Some((6, 21)));
    assert!(
        e.to_string()
            .contains("wait takes a whole number of seconds"),
        "{e}"
    );
    assert!(e.hint().is_some_and(|h| h.contains("\"recursive\"")));
    let e = one_error("[defaults]\npropagation_check = \"recursiv\"\n");
    assert_eq!(e.key(), Some("defaults.propagation_check"));
    assert!(e.to_string().contains("not a propagation check"), "{e}");
}

#[test]
fn renew_before_must_be_shorter_than_any_lifetime() {
    let e = one_error("[defaults]\nrenew_before = \"1900d\"\n");
    assert_eq!(e.key(), Some("defaults.renew_before"));
    assert!(
        e.to_string().contains("longer than certificates live"),
        "{e}"
    );
    assert!(e.to_string().contains("less than 100d"), "{e}");
    let e = one_error(
        "[defaults]\nsolver = \"x\"\n\n[[certificate]]\ndomains = [\"a.test\"]\nrenew_before = \"100d\"\n",
    );
    assert_eq!(e.key(), Some("certificate[1].renew_before"));
    let c = parse("[defaults]\nrenew_before = \"99d23h\"\n").expect("just under the cap");
    assert_eq!(
        c.defaults.renew_before,
        Some(MAX_RENEW_BEFORE - Duration::from_secs(3600))
    );
}

/// The order options of a `[[certificate]]`: read, and each bad value an
/// error at its key with a fix.
#[test]
fn order_options_per_certificate() {
    let c = parse(
        "[[certificate]]\ndomains = [\"a.example\", \"192.0.2.1\"]\nsolver = \"standalone\"\nchallenges = [\"tls-alpn-01\", \"http-01\"]\nreuse_key = true\npreferred_chain = \" ISRG Root X1 \"\nprofile = \"shortlived\"\n",
    )
    .expect("valid");
    let o = &c.certificates[0].order;
    assert_eq!(
        o.challenges,
        [
            certsmith_plugin_api::ChallengeType::TlsAlpn01,
            certsmith_plugin_api::ChallengeType::Http01
        ]
    );
    assert!(o.reuse_key);
    assert_eq!(o.preferred_chain.as_deref(), Some("ISRG Root X1"));
    assert_eq!(o.profile.as_deref(), Some("shortlived"));
    assert_eq!(c.certificates[0].domain_names(), ["a.example", "192.0.2.1"]);

    for (line, key, want) in [
        (
            "challenges = [\"http-01\", \"http-01\"]",
            "challenges",
            "twice",
        ),
        (
            "challenges = [\"http01\"]",
            "challenges",
            "unknown challenge type 'http01'",
        ),
        ("profile = \"\"", "profile", "empty"),
        ("preferred_chain = \" \"", "preferred_chain", "empty"),
    ] {
        let e = one_error(&format!(
            "[[certificate]]\ndomains = [\"a.example\"]\nsolver = \"s\"\n{line}\n"
        ));
        assert_eq!(
            e.key(),
            Some(format!("certificate[1].{key}").as_str()),
            "{e}"
        );
        assert_eq!(e.pos().map(|p| p.line), Some(4), "{e}");
        assert!(e.to_string().contains(want), "{e}");
        assert!(e.hint().is_some(), "{e:?}");
    }
    let e = one_error("[[certificate]]\ncsr = \"missing.csr\"\nsolver = \"s\"\n");
    assert_eq!(e.key(), Some("certificate[1].csr"), "{e}");
    assert!(e.to_string().contains("/etc/certsmith/missing.csr"), "{e}");
}

#[test]
fn per_name_solvers_and_named_instances() {
    let c = parse(
        r#"
[solvers.site-b]
plugin = "webroot"
path = "/srv/b"

[[certificate]]
domains = ["a.ex.test", "b.ex.test", "*.ex.test"]
solver = "webroot"
solvers = { "B.ex.test" = "site-b", "*.ex.test" = "rfc2136" }
"#,
    )
    .expect("valid");
    let cert = &c.certificates[0];
    let names: Vec<(&str, &str)> = cert
        .name_solvers
        .iter()
        .map(|(n, s, _)| (n.as_str(), s.as_str()))
        .collect();
    assert_eq!(names, [("b.ex.test", "site-b"), ("*.ex.test", "rfc2136")]);
    assert_eq!(c.plugin_code("site-b"), "webroot");
    assert_eq!(c.plugin_code("rfc2136"), "rfc2136");
    let table = c.instance_table("site-b");
    assert_eq!(
        table.get("path").and_then(toml::Value::as_str),
        Some("/srv/b")
    );
    assert!(
        !table.contains_key("plugin"),
        "plugin is not a solver option"
    );

    // Every name listed: no default needed; the first stands for it.
    let c = parse(
        "[[certificate]]\ndomains = [\"a.ex.test\", \"b.ex.test\"]\nsolvers = { \"a.ex.test\" = \"x\", \"b.ex.test\" = \"y\" }\n",
    )
    .expect("valid");
    assert_eq!(c.certificates[0].solver, "x");

    // A name left without a solver is named; a key that is no domain too.
    let e = one_error(
        "[[certificate]]\ndomains = [\"a.ex.test\", \"b.ex.test\"]\nsolvers = { \"a.ex.test\" = \"x\" }\n",
    );
    assert_eq!(e.key(), Some("certificate[1].solver"));
    assert!(e.to_string().contains("'b.ex.test'"), "{e}");
    let e = one_error(
        "[[certificate]]\ndomains = [\"a.ex.test\"]\nsolver = \"x\"\nsolvers = { \"c.ex.test\" = \"x\" }\n",
    );
    assert_eq!(e.key(), Some("certificate[1].solvers.\"c.ex.test\""));
    assert!(e.hint().is_some_and(|h| h.contains("domains")), "{e:?}");
    let e = one_error("[solvers.w]\nplugin = \"\"\n");
    assert_eq!(e.key(), Some("solvers.w.plugin"));
}

#[test]
fn hooks_per_certificate_over_defaults() {
    let c = parse(
        r#"
[defaults]
solver = "webroot"
pre_hook = "stop"
post_hook = "start"
hook_timeout = "5m"

[[certificate]]
domains = ["a.example"]
pre_hook = "stop a"
hook_timeout = "10s"

[[certificate]]
domains = ["b.example"]
"#,
    )
    .expect("valid");
    let (a, b) = (&c.certificates[0], &c.certificates[1]);
    assert_eq!(c.pre_hook(a).as_deref(), Some("stop a"));
    assert_eq!(c.post_hook(a).as_deref(), Some("start"));
    assert_eq!(c.hook_timeout(a), Some(Duration::from_secs(10)));
    assert_eq!(c.pre_hook(b).as_deref(), Some("stop"));
    assert_eq!(c.hook_timeout(b), Some(Duration::from_secs(300)));

    let e = one_error("[defaults]\nhook_timeout = \"2d\"\n");
    assert_eq!(e.key(), Some("defaults.hook_timeout"));
    let e = one_error("[defaults]\nhook_timeout = \"2s\"\ndeploy_hook_timeout = \"3s\"\n");
    assert_eq!(e.key(), Some("defaults.deploy_hook_timeout"));
    assert!(
        e.hint().is_some_and(|h| h.contains("hook_timeout")),
        "{e:?}"
    );
    let e = one_error(
        "[defaults]\nsolver = \"x\"\n[[certificate]]\ndomains = [\"a.example\"]\npost_hook = \" \"\n",
    );
    assert_eq!(e.key(), Some("certificate[1].post_hook"));
    assert!(e.hint().is_some_and(|h| h.contains("post_hook")), "{e:?}");
}
