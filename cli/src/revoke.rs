//! `certsmith revoke --cert-name NAME [--reason R] [--key-file PEM]`.
//!
//! Why this module exists: revocation is the one lifecycle step that must
//! work when things have gone wrong: the key leaked, or the account is
//! lost. It signs with the state directory's account of the certificate's
//! CA (the one account per CA directory), or, with `--key-file`, with the
//! certificate's own private key, which RFC 8555 §7.6 accepts without any
//! account. Afterwards the lineage is marked revoked, `list` shows it, and
//! the next `run` orders a replacement, unless the reason says the names
//! are no longer in use (`cessation-of-operation`, `affiliation-changed`):
//! then the certificate is retired, and never renewed again.

use std::path::PathBuf;

use certsmith_core::acme::{AcmeClient, RevocationReason};
use certsmith_core::error::IssueError;
use certsmith_core::renewal;
use certsmith_core::store::{RetiredRecord, RevocationRecord};
use serde_json::json;

use crate::failure::Failure;
use crate::output::{outln, print_json};
use crate::setup;
use crate::{GlobalArgs, OutputFormat, exit};

/// `--reason` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReasonArg {
    /// No particular reason (code 0).
    Unspecified,
    /// The private key was exposed (code 1).
    KeyCompromise,
    /// A newer certificate replaces it (code 4).
    Superseded,
    /// The names are no longer in use (code 5).
    CessationOfOperation,
    /// The subscriber's affiliation changed (code 3).
    AffiliationChanged,
}

impl From<ReasonArg> for RevocationReason {
    fn from(r: ReasonArg) -> Self {
        match r {
            ReasonArg::Unspecified => RevocationReason::Unspecified,
            ReasonArg::KeyCompromise => RevocationReason::KeyCompromise,
            ReasonArg::Superseded => RevocationReason::Superseded,
            ReasonArg::CessationOfOperation => RevocationReason::CessationOfOperation,
            ReasonArg::AffiliationChanged => RevocationReason::AffiliationChanged,
        }
    }
}

/// Revoke a stored certificate's current version.
#[derive(Debug, clap::Args)]
pub(crate) struct RevokeArgs {
    /// The certificate to revoke.
    #[arg(long, value_name = "NAME")]
    cert_name: String,
    /// Why.
    #[arg(long, value_enum, default_value_t = ReasonArg::Unspecified)]
    reason: ReasonArg,
    /// Sign with this private key (PEM) instead of the account key: the
    /// certificate's own key, e.g. `<state>/certs/NAME/current/privkey.pem`,
    /// when the account is lost.
    #[arg(long, value_name = "PEM")]
    key_file: Option<PathBuf>,
    /// Revoke this version (see lineage.toml) instead of the current one.
    #[arg(long, value_name = "N")]
    cert_version: Option<u32>,
    /// Extra CA certificates (PEM) for the CA's HTTPS [default: the one
    /// recorded at issuance].
    #[arg(long, value_name = "PEM")]
    ca_cert: Option<PathBuf>,
}

pub(crate) async fn run(global: &GlobalArgs, args: RevokeArgs) -> u8 {
    match revoke(global, &args).await {
        Ok(code) => code,
        Err(f) => f.report(global, Some(&args.cert_name)),
    }
}

async fn revoke(global: &GlobalArgs, args: &RevokeArgs) -> Result<u8, Failure> {
    let config = setup::load_config(global).map_err(|e| {
        let first = e.errors.first();
        Failure::usage(
            e.to_string(),
            first.and_then(|f| f.hint()).or(Some("fix the config file")),
        )
    })?;
    let store = setup::open_store(global, config.as_ref())?;
    let name = &args.cert_name;
    let lineage = store
        .load_lineage(name)
        .map_err(IssueError::from)?
        .ok_or_else(|| {
            Failure::usage(
                format!("no certificate named '{name}' in {}", store.location()),
                Some("`certsmith list` shows the stored certificates"),
            )
        })?;
    let version = store
        .read_version(name, args.cert_version)
        .map_err(IssueError::from)?
        .ok_or_else(|| {
            Failure::usage(
                match args.cert_version {
                    Some(v) => format!("'{name}' has no version {v}"),
                    None => format!("'{name}' has no current version"),
                },
                Some("pass --cert-version N of a version `certsmith list` shows"),
            )
        })?;
    let what = match &version.dir {
        Some(dir) => dir
            .join(certsmith_core::store::CERT_FILE)
            .display()
            .to_string(),
        None => format!("{name} version {}", version.version),
    };
    let facts = renewal::read_cert_pem(&version.files.cert_pem, &what)
        .map_err(|e| Failure::usage(e.to_string(), None))?;

    let ca_cert = args
        .ca_cert
        .clone()
        .or_else(|| lineage.ca_cert.as_ref().map(PathBuf::from));
    let client = AcmeClient::new(&lineage.server, ca_cert.as_deref())?;
    let reason: RevocationReason = args.reason.into();
    let signed_with = match &args.key_file {
        Some(path) => {
            let key = std::fs::read_to_string(path).map_err(|e| {
                Failure::usage(
                    format!("cannot read --key-file {}: {e}", path.display()),
                    Some("give the PEM private key of the certificate"),
                )
            })?;
            client
                .revoke_with_key(&facts.der, &key, reason)
                .await
                .map(|()| "certificate key")
        }
        None => client
            .revoke(&store, &facts.der, reason)
            .await
            .map(|()| "account key"),
    };
    let already = matches!(
        &signed_with,
        Err(IssueError::CaRefused { problem, .. }) if problem.is("alreadyRevoked")
    );
    let signed_with = match signed_with {
        Ok(s) => s,
        Err(_) if already => "already revoked",
        Err(e) => {
            let mut f = Failure::from_issue(&e);
            if args.key_file.is_none() && matches!(e, IssueError::NoStoredAccount { .. }) {
                f.hint = Some(
                    "without the account, pass --key-file with the certificate's private key"
                        .to_owned(),
                );
            }
            return Err(f);
        }
    };

    // Mark the lineage (for the current version only: an old version's
    // revocation does not make the current one unusable).
    // Names no longer in use (cessation of operation, affiliation
    // changed) retire the certificate: nothing renews it again. Any other
    // reason queues a replacement.
    let retires = matches!(
        args.reason,
        ReasonArg::CessationOfOperation | ReasonArg::AffiliationChanged
    );
    let current = renewal::read_current(&store, name).ok().flatten();
    let at = certsmith_core::timefmt::now_rfc3339();
    if current.as_ref().is_some_and(|c| c.serial == facts.serial) {
        let record = RevocationRecord {
            serial: facts.serial.clone(),
            reason: reason.as_str().to_owned(),
            at: at.clone(),
        };
        let retired = retires.then(|| RetiredRecord {
            reason: reason.as_str().to_owned(),
            at: at.clone(),
        });
        let (s, n) = (store.clone(), name.clone());
        tokio::task::spawn_blocking(move || {
            s.update_lineage(&n, &mut |l| {
                l.revoked = Some(record.clone());
                if retired.is_some() {
                    l.retired = retired.clone();
                }
            })
        })
        .await
        .map_err(|e| Failure::usage(format!("the store writer failed: {e}"), None))?
        .map_err(IssueError::from)?;
    }
    match global.output {
        OutputFormat::Json => print_json(&json!({
            "name": name,
            "serial": facts.serial,
            "reason": reason.as_str(),
            "reason_code": reason.code(),
            "signed_with": signed_with,
            "already_revoked": already,
            "revoked_at": at,
            "retired": retires,
        })),
        OutputFormat::Text => {
            if already {
                outln!(
                    "certificate '{name}' (serial {}) was already revoked",
                    facts.serial
                );
            } else {
                outln!(
                    "revoked certificate '{name}' (serial {}), reason {}, signed with the {signed_with}",
                    facts.serial,
                    reason.as_str()
                );
            }
            if global.quiet {
            } else if retires {
                eprintln!(
                    "[certsmith] '{name}' is retired: `certsmith run` and `renew` never renew it (`certsmith delete --cert-name {name}` removes it)"
                );
            } else {
                eprintln!(
                    "[certsmith] the next `certsmith run` (or `certsmith renew --cert-name {name}`) orders a replacement"
                );
            }
        }
    }
    Ok(exit::OK)
}
