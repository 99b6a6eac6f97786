//! Failures as the CLI reports them: a message, a hint that names the
//! flags to use, a class and an exit code.
//!
//! Why this module exists: core errors say what went wrong in terms of
//! the domain (a server, a CA bundle, an account); only the CLI knows
//! which flag or variable sets each, so the hints are made here, once,
//! for every command.

use certsmith_core::agent::JobError;
use certsmith_core::dns::DnsError;
use certsmith_core::error::{ErrorClass, IssueError};
use certsmith_core::identifiers::IdentifierError;
use certsmith_core::plugin::PluginHostError;
use serde_json::json;

use crate::output::{print_error, print_json};
use crate::{GlobalArgs, OutputFormat, exit};

/// A failure with its exit code, message and hint.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) class: &'static str,
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

impl Failure {
    pub(crate) fn usage(message: impl Into<String>, hint: Option<&str>) -> Self {
        Failure {
            code: exit::USAGE,
            class: "usage",
            message: message.into(),
            hint: hint.map(str::to_owned),
        }
    }

    pub(crate) fn from_issue(e: &IssueError) -> Self {
        let class = e.class();
        Failure {
            code: exit_code(class),
            class: class.as_str(),
            message: e.to_string(),
            hint: issue_hint(e),
        }
    }

    pub(crate) fn from_job(e: &JobError) -> Self {
        match e {
            JobError::Hook(h) => Failure {
                code: exit::DEPLOY_HOOK,
                class: match h.kind() {
                    certsmith_core::hooks::HookKind::Deploy => "deploy_hook",
                    _ => "hook",
                },
                message: e.to_string(),
                hint: Some(h.hint().to_owned()),
            },
            JobError::Conflict { superset, .. } => Failure::usage(
                e.to_string(),
                Some(if *superset {
                    "pass --expand to add the names to it, --replace to replace it, or another --cert-name for a separate certificate"
                } else {
                    "pass --replace to replace it, or another --cert-name for a separate certificate"
                }),
            ),
            JobError::NotAttempted => Failure {
                code: exit::INTERRUPTED,
                class: "cancelled",
                message: e.to_string(),
                hint: None,
            },
            _ => match e.issue_error() {
                Some(issue) => Failure {
                    message: e.to_string(),
                    ..Failure::from_issue(issue)
                },
                None => Failure::usage(e.to_string(), None),
            },
        }
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        json!({
            "class": self.class,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.code,
        })
    }

    /// Prints it on stderr (and as JSON on stdout with `--output json`,
    /// naming the certificate when there is one); returns the exit code.
    pub(crate) fn report(&self, global: &GlobalArgs, name: Option<&str>) -> u8 {
        print_error(&self.message, self.hint.as_deref());
        if global.output == OutputFormat::Json {
            let mut obj = json!({ "error": self.json() });
            if let Some(n) = name {
                obj["name"] = json!(n);
            }
            print_json(&obj);
        }
        self.code
    }
}

impl From<IssueError> for Failure {
    fn from(e: IssueError) -> Self {
        Failure::from_issue(&e)
    }
}

impl From<certsmith_core::store::StoreError> for Failure {
    fn from(e: certsmith_core::store::StoreError) -> Self {
        Failure::from_issue(&e.into())
    }
}

/// The exit code of a failure class.
pub(crate) fn exit_code(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::Usage | ErrorClass::Store => exit::USAGE,
        ErrorClass::Solver => exit::SOLVER,
        ErrorClass::CaRefused => exit::CA_REFUSED,
        ErrorClass::RateLimited => exit::RATE_LIMITED,
        ErrorClass::Network => exit::NETWORK,
        ErrorClass::Cancelled => exit::INTERRUPTED,
        ErrorClass::PropagationTimeout => exit::PROPAGATION_TIMEOUT,
        ErrorClass::Hook => exit::DEPLOY_HOOK,
        _ => exit::INTERNAL,
    }
}

/// What the operator can do about `e`, naming the flags to use.
pub(crate) fn issue_hint(e: &IssueError) -> Option<String> {
    Some(match e {
        IssueError::Identifier(IdentifierError::WildcardNeedsDns { .. }) => {
            "a wildcard can only be validated through DNS (RFC 8555 §8.4)".to_owned()
        }
        IssueError::Identifier(IdentifierError::Empty) => {
            "pass at least one -d/--domain".to_owned()
        }
        IssueError::Identifier(IdentifierError::TooMany { .. }) => {
            "split the names over several certificates (each with its own --cert-name)".to_owned()
        }
        IssueError::Identifier(IdentifierError::IpNeedsHttpOrTls { .. }) => {
            "pass --solver standalone (or webroot) for IP addresses, or give DNS names with -d".to_owned()
        }
        IssueError::Identifier(_) => {
            "domains are DNS names such as example.com or *.example.com, or IP addresses such as 192.0.2.1 or 2001:db8::1"
                .to_owned()
        }
        IssueError::BadServer { .. } => {
            "--server takes letsencrypt, letsencrypt-staging, zerossl, or the https URL of an ACME directory"
                .to_owned()
        }
        IssueError::CaCert { .. } => {
            "--ca-cert takes a PEM file with one or more CA certificates".to_owned()
        }
        IssueError::Eab(_) | IssueError::EabRequired { .. } => {
            "pass --eab-kid and --eab-hmac-key (or CERTSMITH_EAB_KID and CERTSMITH_EAB_HMAC_KEY) from your CA account page"
                .to_owned()
        }
        IssueError::TermsNotAgreed { .. } => {
            "read the terms, then add --agree-tos".to_owned()
        }
        IssueError::AccountDeactivated { path, .. } => format!(
            "to start over with a new account, remove {} (its certificates stay valid)",
            path.display()
        ),
        IssueError::NoUsableChallenge { .. } => {
            "choose a solver for a challenge type this CA offers (or widen --challenge / `challenges`)".to_owned()
        }
        IssueError::UnsupportedChallenge { supported, .. } => format!(
            "pass --challenge (or set `challenges` in the certificate's config) to one of what the solver offers: {}; or choose another --solver",
            supported.join(", ")
        ),
        IssueError::WildcardChallenge { .. } => {
            "add --challenge dns-01 (or dns-01 to `challenges` in the certificate's config), with a DNS solver".to_owned()
        }
        IssueError::CsrNames { .. } => {
            "make the CSR for exactly the certificate's names, or leave out -d / `domains` (the names come from the CSR)".to_owned()
        }
        IssueError::Csr { .. } => {
            "order the certificate again with --csr FILE (or `csr` in its config)".to_owned()
        }
        IssueError::UnknownProfile { available, .. } if available.is_empty() => {
            "leave out --profile (or `profile` in the certificate's config): this CA offers none".to_owned()
        }
        IssueError::UnknownProfile { available, .. } => format!(
            "pass --profile (or set `profile` in the certificate's config) to one of: {}",
            available.join(", ")
        ),
        IssueError::Dns {
            source: DnsError::NoResolvers | DnsError::SystemConfig { .. },
            ..
        } => "pass --dns-resolver IP[:PORT] (or fix /etc/resolv.conf)".to_owned(),
        IssueError::Dns {
            source: DnsError::CnameLoop(_),
            ..
        } => "fix the CNAME records, or pass --no-follow-cname to write at the challenge name itself"
            .to_owned(),
        IssueError::Dns {
            source: DnsError::NoNameservers { .. },
            ..
        } => "pass --propagation-server IP[:PORT] with servers that answer for the zone, or --propagation-check recursive"
            .to_owned(),
        IssueError::Dns { .. } => {
            "check the _acme-challenge records with dig; --dns-resolver chooses the resolvers, --no-follow-cname ignores CNAMEs"
                .to_owned()
        }
        // A server that answers with an error (refused, unreachable) will
        // not answer better given longer: say where else to look.
        IssueError::Propagation {
            source: DnsError::PropagationTimeout { servers, .. },
            ..
        } if servers
            .iter()
            .any(|s| !s.ready && s.observed.starts_with("error:")) =>
        {
            "a nameserver answered with an error, not the record: pass --propagation-server IP[:PORT] with servers that answer for the zone, or --propagation-check recursive (or wait:SECS) if the authoritative servers cannot be asked from here"
                .to_owned()
        }
        IssueError::Propagation {
            source: DnsError::PropagationTimeout {
                recursive: true, ..
            },
            ..
        } => {
            "the record was removed again; rerun with a longer --propagation-timeout (a resolver may keep a cached \"no such record\" up to the zone's SOA minimum TTL), or --propagation-check wait:SECS if no resolver here sees the public records"
                .to_owned()
        }
        IssueError::Propagation { .. } => {
            "the record was removed again; rerun with a longer --propagation-timeout, or check that the zone's nameservers are in sync; if they cannot be reached from here, use --propagation-check recursive or wait:SECS"
                .to_owned()
        }
        IssueError::Plugin(PluginHostError::UnknownSolver { available, .. })
            if available.is_empty() =>
        {
            "add --plugin-dir DIR or set CERTSMITH_PLUGIN_PATH to where the plugins are".to_owned()
        }
        IssueError::Plugin(PluginHostError::UnknownSolver { .. }) => {
            "`certsmith solvers list` shows the solvers found and why any was refused".to_owned()
        }
        IssueError::NoStoredAccount { .. } => {
            "pass the --server the account was created with".to_owned()
        }
        IssueError::Plugin(p) if p.is_usage() => {
            "give solver options as --solver-opt KEY=VALUE, their environment variable, or in [solvers.<CODE>] of the config file; see `certsmith solvers info <CODE>`".to_owned()
        }
        IssueError::Plugin(_) => "see `certsmith solvers list`".to_owned(),
        IssueError::Solver { .. } => {
            "check the solver's options and that it can do what the challenge needs (ports, permissions, credentials)"
                .to_owned()
        }
        IssueError::ValidationFailed { failures }
            if failures
                .iter()
                .all(|f| f.challenge.as_deref() == Some("dns-01")) =>
        {
            "the CA did not find the _acme-challenge TXT record: check that the solver writes to the zone the CA asks (dig TXT _acme-challenge.<name>), and any CNAME on it"
                .to_owned()
        }
        IssueError::ValidationFailed { failures } => {
            let conn = failures.iter().any(|f| {
                f.problem
                    .as_ref()
                    .is_some_and(|p| p.is("connection") || p.is("dns") || p.is("tls"))
            });
            if conn {
                "the CA must reach the name over the Internet (DNS pointing here, ports 80/443 open)"
                    .to_owned()
            } else {
                "check that the name points at the server answering the challenge".to_owned()
            }
        }
        IssueError::CaRefused { action, .. } if action.contains("account") => {
            "check --email and, if the CA uses external account binding, --eab-kid and --eab-hmac-key"
                .to_owned()
        }
        IssueError::RateLimited { .. } => {
            "wait until the retry time; use --server letsencrypt-staging while testing"
                .to_owned()
        }
        IssueError::Network { .. } | IssueError::Timeout { .. } => {
            "check the server URL, your network, and --ca-cert for a private CA".to_owned()
        }
        IssueError::Store(certsmith_core::store::StoreError::Missing { .. }) => {
            "check --state-dir (or CERTSMITH_STATE_DIR, or state_dir in the config file); \
             the directory is created by the first `certsmith issue` or `certsmith run`"
                .to_owned()
        }
        IssueError::Store(certsmith_core::store::StoreError::NoDefaultRoot) => {
            "pass --state-dir DIR (or set CERTSMITH_STATE_DIR)".to_owned()
        }
        IssueError::Store(_) => {
            "pass a writable --state-dir (or set CERTSMITH_STATE_DIR)".to_owned()
        }
        IssueError::PreHook(h) => h.hint().to_owned(),
        _ => return None,
    })
}
