//! `certsmith account show|deactivate|rollover`.
//!
//! Why this module exists: the ACME account is the identity every order is
//! made with, and it lives in the store (`accounts/<ca>/<id>/account.json`).
//! Operators need to see it (URL, contact, key type and thumbprint), to
//! replace its key after a suspected leak without losing the account (key
//! rollover, RFC 8555 §7.3.5), and to retire it for good (deactivation,
//! §7.3.6: irreversible, hence `--yes`). Which account: the one for
//! `--server`/`--email`, else the config file's `[defaults]`, else the only
//! one stored.

use std::path::PathBuf;

use certsmith_core::acme::{self, AccountOptions, AccountSummary, AcmeClient};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::failure::Failure;
use crate::output::{outln, print_json};
use crate::setup;
use crate::{GlobalArgs, OutputFormat, exit};

/// Which account, and how to reach its CA.
#[derive(Debug, Clone, Args)]
pub(crate) struct AccountSelect {
    /// The CA: letsencrypt, letsencrypt-staging, zerossl, or an ACME
    /// directory URL [default: the config's server, else the only stored account's].
    #[arg(long, value_name = "NAME|URL", env = "CERTSMITH_SERVER")]
    server: Option<String>,
    /// The account's contact e-mail [default: the config's email].
    #[arg(long, value_name = "ADDR", env = "CERTSMITH_EMAIL")]
    email: Option<String>,
    /// Extra CA certificates (PEM) for the CA's HTTPS.
    #[arg(long, value_name = "PEM", env = "CERTSMITH_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AccountCommand {
    /// Show stored accounts: URL, contact, key type and thumbprint.
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

fn email_of(contact: &[String]) -> Option<String> {
    contact
        .iter()
        .find_map(|c| c.strip_prefix("mailto:"))
        .map(str::to_owned)
}

async fn dispatch(global: &GlobalArgs, cmd: AccountCommand) -> Result<u8, Failure> {
    let config = setup::load_config(global)
        .map_err(|e| Failure::usage(e.to_string(), e.errors.first().and_then(|f| f.hint())))?;
    let (select, action) = match &cmd {
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
    let stored = acme::stored_accounts(&store)?;
    let server = match select
        .server
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.defaults.server.clone()))
    {
        Some(s) => Some(acme::resolve_server(&s)?),
        None => None,
    };
    let email = select
        .email
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.defaults.email.clone()));

    if action == "show" {
        let shown: Vec<&AccountSummary> = stored
            .iter()
            .filter(|a| server.as_ref().is_none_or(|s| &a.server == s))
            .filter(|a| {
                email
                    .as_ref()
                    .is_none_or(|e| email_of(&a.contact).as_deref() == Some(e.as_str()))
            })
            .collect();
        print_accounts(global, &shown, &store.location());
        return Ok(exit::OK);
    }

    // One account to act on.
    let (server, email) = match server {
        Some(s) => (s, email),
        None => match stored.as_slice() {
            [only] => (
                only.server.clone(),
                email.or_else(|| email_of(&only.contact)),
            ),
            [] => {
                return Err(Failure::usage(
                    format!("no account is stored in {}", store.location()),
                    Some("an account is created by the first `certsmith issue` or `run`"),
                ));
            }
            many => {
                let list: Vec<String> = many
                    .iter()
                    .map(|a| format!("{} {}", a.server, a.contact.join(",")))
                    .collect();
                return Err(Failure::usage(
                    format!(
                        "{} accounts are stored; say which with --server (and --email): {}",
                        many.len(),
                        list.join("; ")
                    ),
                    None,
                ));
            }
        },
    };
    let ca_cert = select
        .ca_cert
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.defaults.ca_cert.clone()));
    let client = AcmeClient::new(&server, ca_cert.as_deref())?;
    let opts = AccountOptions {
        email,
        ..AccountOptions::default()
    };
    let summary = if let AccountCommand::Deactivate { yes, .. } = cmd {
        if !yes {
            let who = client
                .describe_account(&store, &opts)?
                .map_or_else(|| server.clone(), |a| a.url);
            return Err(Failure::usage(
                format!("refusing to deactivate {who} without --yes"),
                Some(
                    "deactivation is permanent: the CA will refuse the account from then on; add --yes to confirm",
                ),
            ));
        }
        client.deactivate_account(&store, &opts).await?
    } else {
        client.rollover_account(&store, &opts).await?
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
        "path": a.path,
    })
}

fn print_accounts(global: &GlobalArgs, accounts: &[&AccountSummary], location: &str) {
    match global.output {
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
                outln!("account {}", a.url);
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
            }
        }
    }
}
