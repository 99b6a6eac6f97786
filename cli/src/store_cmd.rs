//! `certsmith store …`: operations on a whole store rather than on one
//! certificate (`store migrate`, `store rotate-key`).
//!
//! Why this module exists: to give `certsmith_core::store::migrate` a
//! command line. A LOCATION is a directory (a state directory) or a store
//! URL (`postgres://…`); both directions are the same code.

use std::path::PathBuf;

use certsmith_core::store::migrate::{MigrateError, MigrateEvent, MigrateReport, migrate};
use certsmith_core::store::{Store, StoreError};
use serde_json::json;

use crate::failure::Failure;
use crate::output::{outln, print_json};
use crate::{GlobalArgs, OutputFormat, exit};

/// Operations on a whole store.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum StoreCommand {
    /// Copy everything a store holds (accounts, certificates with every
    /// version, pending orders, journal, rate limits) into another, and
    /// verify the copy. Nothing in the destination is replaced.
    #[command(after_help = crate::help::STORE_MIGRATE)]
    Migrate(MigrateArgs),
    /// Re-encrypt every private key of a database store (--store) with a
    /// new key, in one transaction: the old key in CERTSMITH_STORE_KEY, the
    /// new one in CERTSMITH_STORE_NEW_KEY (or their _FILE forms).
    #[command(name = "rotate-key", after_help = crate::help::STORE_ROTATE_KEY)]
    RotateKey,
}

/// `store migrate`.
#[derive(Debug, clap::Args)]
pub(crate) struct MigrateArgs {
    /// The store to copy from: a state directory or a store URL
    /// (postgres://...). Only read.
    #[arg(long, value_name = "LOCATION")]
    from: String,
    /// The store to copy into: a state directory (created if needed) or a
    /// store URL.
    #[arg(long, value_name = "LOCATION")]
    to: String,
}

fn is_url(location: &str) -> bool {
    location.contains("://")
}

/// Opens a LOCATION: a URL through `Store::open_url`, a directory with
/// `Store::open_existing` (the source) or `Store::open` (the destination).
fn open(location: &str, flag: &str, create: bool) -> Result<Store, Failure> {
    let opened = if is_url(location) {
        Store::open_url(location, None)
    } else if create {
        Store::open(PathBuf::from(location))
    } else {
        Store::open_existing(PathBuf::from(location))
    };
    opened.map_err(|e| {
        let hint = match &e {
            StoreError::Missing { .. } => format!("{flag} takes an existing state directory"),
            StoreError::BadUrl { .. } => {
                format!("{flag} takes a directory or a postgres://USER@HOST/DB URL")
            }
            StoreError::NoStoreKey | StoreError::WrongStoreKey { .. } => format!(
                "set CERTSMITH_STORE_KEY (or CERTSMITH_STORE_KEY_FILE) to the key of the store of {flag}"
            ),
            _ => format!("check {flag}: a directory this user can use, or a store URL"),
        };
        Failure {
            code: exit::USAGE,
            class: "store",
            message: format!("{flag}: {e}"),
            hint: Some(hint),
        }
    })
}

fn failure(e: &MigrateError) -> Failure {
    let hint = match e {
        MigrateError::Conflicts { .. } => {
            "migrate into an empty store, or remove (or rename with `certsmith rename`) what is named in the destination"
        }
        MigrateError::SameStore(_) => "give --from and --to two different stores",
        MigrateError::MissingVersion { .. } => {
            "the source is damaged: restore the version from a backup, or remove the certificate from the source (`certsmith delete`)"
        }
        MigrateError::Mismatch { .. } => {
            "the destination did not return what was written: check its storage, then remove the copy and migrate again"
        }
        MigrateError::Source { .. } => "check that --from exists and this user can read it",
        MigrateError::Destination { .. } => "check that this user can write --to",
        _ => "see the message",
    };
    Failure {
        code: exit::USAGE,
        class: "store",
        message: e.to_string(),
        hint: Some(hint.to_owned()),
    }
}

pub(crate) async fn run(global: &GlobalArgs, cmd: StoreCommand) -> u8 {
    match cmd {
        StoreCommand::Migrate(args) => run_migrate(global, args).await,
        StoreCommand::RotateKey => run_rotate_key(global).await,
    }
}

/// The variable holding the new key of `store rotate-key`.
const NEW_KEY_VAR: &str = "CERTSMITH_STORE_NEW_KEY";

async fn run_rotate_key(global: &GlobalArgs) -> u8 {
    use certsmith_core::store::pg::{PgStore, STORE_KEY_VAR, StoreKey};
    let env = certsmith_core::envfile::process_env;
    let usage = |message: String, hint: &str| Failure {
        code: exit::USAGE,
        class: "store",
        message,
        hint: Some(hint.to_owned()),
    };
    let config = match crate::setup::load_config(global) {
        Ok(c) => c,
        Err(e) => return crate::setup::report_config_errors(global, &e),
    };
    let Some(url) = crate::setup::store_url(global, config.as_ref()) else {
        return usage(
            "store rotate-key needs a database store: there is none to rotate (the state directory's keys are files, 0600)".to_owned(),
            "pass --store postgres://USER@HOST/DB (or set CERTSMITH_STORE, or [store] url)",
        )
        .report(global, None);
    };
    let keys = StoreKey::from_env(STORE_KEY_VAR, &env)
        .and_then(|old| StoreKey::from_env(NEW_KEY_VAR, &env).map(|new| (old, new)));
    let (old, new) = match keys {
        Ok((old, Some(new))) => (old, new),
        Ok((_, None)) => {
            return usage(
                format!("{NEW_KEY_VAR} is not set"),
                "set CERTSMITH_STORE_NEW_KEY (or CERTSMITH_STORE_NEW_KEY_FILE) to the new key: 32 random bytes in base64, e.g. from `openssl rand -base64 32`",
            )
            .report(global, None);
        }
        Err(e) => return Failure::from(e).report(global, None),
    };
    let done = tokio::task::spawn_blocking(move || {
        let store = PgStore::open(&url, old, None)?;
        let rotated = store.rotate_key(&new)?;
        Ok::<_, StoreError>((store, rotated, new.id_hex()))
    })
    .await;
    let (store, rotated, id) = match done {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Failure::from(e).report(global, None),
        Err(e) => {
            return Failure::usage(format!("the rotation task failed: {e}"), None)
                .report(global, None);
        }
    };
    use certsmith_core::store::Storage as _;
    match global.output {
        OutputFormat::Json => print_json(&json!({
            "rotated": {
                "store": store.location(),
                "key_id": id,
                "accounts": rotated.accounts,
                "private_keys": rotated.keys,
                "pending_orders": rotated.pending_orders,
            }
        })),
        OutputFormat::Text => {
            outln!("re-encrypted {} with key {id}:", store.location());
            outln!("  accounts:       {}", rotated.accounts);
            outln!("  private keys:   {}", rotated.keys);
            outln!("  pending orders: {}", rotated.pending_orders);
            outln!(
                "now give every certsmith using this store the new key as CERTSMITH_STORE_KEY (processes with the old one refuse to write)"
            );
        }
    }
    exit::OK
}

async fn run_migrate(global: &GlobalArgs, args: MigrateArgs) -> u8 {
    let stores = open(&args.from, "--from", false)
        .and_then(|from| open(&args.to, "--to", true).map(|to| (from, to)));
    let (from, to) = match stores {
        Ok(s) => s,
        Err(f) => return f.report(global, None),
    };
    let quiet = global.quiet;
    let done = tokio::task::spawn_blocking(move || {
        migrate(&*from, &*to, &mut |event| {
            if quiet {
                return;
            }
            match event {
                MigrateEvent::Checked {
                    accounts,
                    certificates,
                } => eprintln!(
                    "[certsmith] no conflicts; copying {accounts} account(s) and {certificates} certificate(s)"
                ),
                MigrateEvent::Account { ca_host } => {
                    eprintln!("[certsmith] copied the account for {ca_host}");
                }
                MigrateEvent::Certificate { name, versions } => {
                    eprintln!("[certsmith] copied {name} ({versions} version(s))");
                }
                _ => {}
            }
        })
    })
    .await;
    let report: MigrateReport = match done {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return failure(&e).report(global, None),
        Err(e) => {
            return Failure::usage(format!("the migration task failed: {e}"), None)
                .report(global, None);
        }
    };
    match global.output {
        OutputFormat::Json => print_json(&json!({
            "migrated": {
                "from": report.from,
                "to": report.to,
                "accounts": report.accounts,
                "accounts_present": report.accounts_present,
                "certificates": report.certificates,
                "versions": report.versions,
                "pending_orders": report.pending_orders,
                "journal_entries": report.journal_entries,
                "rate_limits": report.rate_limits,
                "verified": report.verified,
            }
        })),
        OutputFormat::Text => {
            outln!("migrated {} into {}:", report.from, report.to);
            outln!(
                "  accounts:        {} copied, {} already there (identical)",
                report.accounts,
                report.accounts_present
            );
            outln!(
                "  certificates:    {} with {} version(s)",
                report.certificates,
                report.versions
            );
            outln!("  pending orders:  {}", report.pending_orders);
            outln!("  journal entries: {}", report.journal_entries);
            outln!("  rate limits:     {}", report.rate_limits);
            outln!(
                "verified: everything read back from {} matches the source",
                report.to
            );
        }
    }
    exit::OK
}
