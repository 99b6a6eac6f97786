//! `certsmith account list|show|deactivate|rollover`.
//!
//! Why this module exists: the ACME account is the identity every order is
//! made with, and it lives in the store (`accounts/<ca>/<id>/account.json`),
//! one per CA directory (`issue --email` changes its contact, never makes
//! a second one). Operators need to see it (URL, contact, key type and
//! thumbprint), to replace its key after a suspected leak without losing
//! the account (key rollover, RFC 8555 §7.3.5), and to retire it for good
//! (deactivation, §7.3.6: irreversible, hence `--yes`). Which account: the
//! one of the CA given by `--server`, else the config file's `[defaults]`,
//! else of the only CA with a stored account.

use std::collections::BTreeSet;
use std::path::PathBuf;

use certsmith_core::acme::{self, AccountSummary, AcmeClient};
use certsmith_core::store::Store;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::failure::Failure;
use crate::output::{outln, print_json};
use crate::setup;
use crate::{GlobalArgs, OutputFormat, exit};

/// Which account (the one of a CA), and how to reach the CA.
#[derive(Debug, Clone, Args)]
pub(crate) struct AccountSelect {
    /// The CA: letsencrypt, letsencrypt-staging, zerossl, or an ACME
    /// directory URL [default: the config's server, else the only CA with a stored account].
    #[arg(long, value_name = "NAME|URL", env = "CERTSMITH_SERVER")]
    server: Option<String>,
    /// Extra CA certificates (PEM) for the CA's HTTPS.
    #[arg(long, value_name = "PEM", env = "CERTSMITH_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AccountCommand {
    /// List every stored account, marking the one in use for each CA.
    #[command(after_help = crate::help::ACCOUNT_LIST)]
    List,
    /// Show the account of a CA: URL, contact, key type and thumbprint.
    #[command(after_help = crate::help::ACCOUNT_SHOW)]
    Show(AccountSelect),
    /// Deactivate the account at the CA, for good.
    #[command(after_help = crate::help::ACCOUNT_DEACTIVATE)]
    Deactivate {
        #[command(flatten)]
        select: AccountSelect,
        /// Confirm: a deactivated account can never be used again.
        #[arg(long)]
        yes: bool,
    },
    /// Replace the account key with a new one (RFC 8555 §7.3.5).
    #[command(after_help = crate::help::ACCOUNT_ROLLOVER)]
    Rollover(AccountSelect),
}

pub(crate) async fn run(global: &GlobalArgs, cmd: AccountCommand) -> u8 {
    match dispatch(global, cmd).await {
        Ok(code) => code,
        Err(f) => f.report(global, None),
    }
}

async fn dispatch(global: &GlobalArgs, cmd: AccountCommand) -> Result<u8, Failure> {
    let config = setup::load_config(global)
        .map_err(|e| Failure::usage(e.to_string(), e.errors.first().and_then(|f| f.hint())))?;
    let (select, action) = match &cmd {
        AccountCommand::List => {
            let store = setup::open_store_read_only(global, config.as_ref())?;
            let stored = acme::stored_accounts(&store)?;
            print_accounts(global, &stored, &store.location(), true);
            return Ok(exit::OK);
        }
        AccountCommand::Show(s) => (s, "show"),
        AccountCommand::Deactivate { select, .. } => (select, "deactivate"),
        AccountCommand::Rollover(s) => (s, "rollover"),
    };
    // `show` only reads; the others change the account at the CA and must
    // be able to store the result, which `open_store` checks first.
    let store = if action == "show" {
        setup::open_store_read_only(global, config.as_ref())?
    } else {
        setup::open_store(global, config.as_ref())?
    };
    let server = match select
        .server
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.defaults.server.clone()))
    {
        Some(s) => acme::resolve_server(&s)?,
        None => match only_server(&store)? {
            Some(s) => s,
            None if action == "show" => {
                print_accounts(global, &[], &store.location(), false);
                return Ok(exit::OK);
            }
            None => {
                return Err(Failure::usage(
                    format!("no account is stored in {}", store.location()),
                    Some("an account is created by the first `certsmith issue` or `run`"),
                ));
            }
        },
    };
    let ca_cert = select
        .ca_cert
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.defaults.ca_cert.clone()));
    let client = AcmeClient::new(&server, ca_cert.as_deref())?;
    let summary = match cmd {
        AccountCommand::Show(_) => {
            let shown: Vec<AccountSummary> = client.describe_account(&store)?.into_iter().collect();
            if shown.is_empty() && global.output == OutputFormat::Text {
                outln!("no account for {server} in {}", store.location());
            } else {
                print_accounts(global, &shown, &store.location(), false);
            }
            return Ok(exit::OK);
        }
        AccountCommand::Deactivate { yes: false, .. } => {
            let who = client
                .describe_account(&store)?
                .map_or_else(|| server.clone(), |a| a.url);
            return Err(Failure::usage(
                format!("refusing to deactivate {who} without --yes"),
                Some(
                    "deactivation is permanent: the CA will refuse the account from then on; add --yes to confirm",
                ),
            ));
        }
        AccountCommand::Deactivate { .. } => client.deactivate_account(&store).await?,
        _ => client.rollover_account(&store).await?,
    };
    match global.output {
        OutputFormat::Json => print_json(&json!({
            "action": action,
            "account": account_json(&summary),
        })),
        OutputFormat::Text => {
            if action == "deactivate" {
                outln!("deactivated account {}", summary.url);
            } else {
                outln!(
                    "new key for account {}: {} thumbprint {}",
                    summary.url,
                    summary.key_type,
                    summary.key_thumbprint
                );
            }
        }
    }
    Ok(exit::OK)
}

/// The CA directory of the stored accounts when there is one; a usage
/// error naming them when there are several.
fn only_server(store: &Store) -> Result<Option<String>, Failure> {
    let servers: BTreeSet<String> = acme::stored_accounts(store)?
        .into_iter()
        .map(|a| a.server)
        .collect();
    match servers.len() {
        0 => Ok(None),
        1 => Ok(servers.into_iter().next()),
        n => Err(Failure::usage(
            format!(
                "accounts of {n} CAs are stored; say which with --server: {}",
                servers.into_iter().collect::<Vec<_>>().join(", ")
            ),
            Some("`certsmith account list` shows them all"),
        )),
    }
}

fn account_json(a: &AccountSummary) -> serde_json::Value {
    json!({
        "url": a.url,
        "server": a.server,
        "contact": a.contact,
        "key_type": a.key_type,
        "key_thumbprint": a.key_thumbprint,
        "created_at": a.created_at,
        "key_changed_at": a.key_changed_at,
        "deactivated_at": a.deactivated_at,
        "status": if a.deactivated_at.is_some() { "deactivated" } else { "valid" },
        "in_use": a.in_use,
        "path": a.path,
    })
}

/// Prints accounts: one JSON object each (`[]` for none), or text blocks;
/// `mark_use` says, in text, which one of its CA is in use.
fn print_accounts(
    global: &GlobalArgs,
    accounts: &[AccountSummary],
    location: &str,
    mark_use: bool,
) {
    match global.output {
        OutputFormat::Json if accounts.is_empty() => print_json(&json!([])),
        OutputFormat::Json => {
            for a in accounts {
                print_json(&account_json(a));
            }
        }
        OutputFormat::Text => {
            if accounts.is_empty() {
                outln!("no accounts in {location}");
            }
            for (i, a) in accounts.iter().enumerate() {
                if i > 0 {
                    outln!();
                }
                match (mark_use, a.in_use) {
                    (false, _) => outln!("account {}", a.url),
                    (true, true) => outln!("account {} (in use)", a.url),
                    (true, false) => outln!(
                        "account {} (not used: another account of this CA is in use)",
                        a.url
                    ),
                }
                outln!("  server:     {}", a.server);
                outln!(
                    "  contact:    {}",
                    if a.contact.is_empty() {
                        "(none)".to_owned()
                    } else {
                        a.contact.join(", ")
                    }
                );
                outln!(
                    "  key:        {} (thumbprint {})",
                    a.key_type,
                    a.key_thumbprint
                );
                outln!("  created:    {}", a.created_at);
                if let Some(t) = &a.key_changed_at {
                    outln!("  key changed: {t}");
                }
                match &a.deactivated_at {
                    Some(t) => outln!("  status:     deactivated ({t})"),
                    None => outln!("  status:     valid"),
                }
                outln!("  path:       {}", a.path.display());
            }
        }
    }
}
