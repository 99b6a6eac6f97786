//! `certsmith delete --cert-name NAME [--keep-files]` and `certsmith
//! rename OLD NEW`: what an operator does with a certificate that is no
//! longer wanted, or wrongly named, without touching the state directory
//! by hand.
//!
//! Why this module exists: the store alone knows where a certificate's
//! files are; these commands ask it (`Storage::remove_cert`,
//! `Storage::rename_cert`). A deleted certificate is first retired, so
//! that a run that read its lineage a moment before never renews it; it
//! is not revoked (`certsmith revoke` does that).

use certsmith_core::error::IssueError;
use certsmith_core::store::{RetiredRecord, Store};
use serde_json::json;

use crate::failure::Failure;
use crate::output::{outln, print_json};
use crate::setup;
use crate::{GlobalArgs, OutputFormat, exit};

/// Retire a stored certificate and remove it from the store.
#[derive(Debug, clap::Args)]
pub(crate) struct DeleteArgs {
    /// The certificate to delete.
    #[arg(long, value_name = "NAME")]
    cert_name: String,
    /// Keep the certificate's files (versions and `current`) where they
    /// are; only the record that renews them is removed.
    #[arg(long)]
    keep_files: bool,
}

/// Rename a stored certificate (its files move with it).
#[derive(Debug, clap::Args)]
pub(crate) struct RenameArgs {
    /// The current name.
    #[arg(value_name = "OLD")]
    old: String,
    /// The new name.
    #[arg(value_name = "NEW")]
    new: String,
}

fn open(global: &GlobalArgs) -> Result<Store, Failure> {
    let config = setup::load_config(global).map_err(|e| {
        Failure::usage(
            e.to_string(),
            e.errors
                .first()
                .and_then(|f| f.hint())
                .or(Some("fix the config file")),
        )
    })?;
    setup::open_store_read_only(global, config.as_ref())
}

fn unknown(store: &Store, name: &str) -> Failure {
    Failure::usage(
        format!("no certificate named '{name}' in {}", store.location()),
        Some("`certsmith list` shows the stored certificates"),
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, certsmith_core::store::StoreError> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure::usage(format!("the store writer failed: {e}"), None))?
        .map_err(|e| Failure::from(IssueError::from(e)))
}

pub(crate) async fn delete(global: &GlobalArgs, args: DeleteArgs) -> u8 {
    let name = args.cert_name.clone();
    let result = async {
        let store = open(global)?;
        let at = certsmith_core::timefmt::now_rfc3339();
        let (s, n) = (store.clone(), name.clone());
        let retired = blocking(move || {
            s.update_lineage(&n, &mut |l| {
                if l.retired.is_none() {
                    l.retired = Some(RetiredRecord {
                        reason: "deleted".to_owned(),
                        at: at.clone(),
                    });
                }
            })
        })
        .await?;
        if retired.is_none() {
            return Err(unknown(&store, &name));
        }
        let (s, n, keep) = (store.clone(), name.clone(), args.keep_files);
        blocking(move || s.remove_cert(&n, keep)).await?;
        Ok(())
    }
    .await;
    if let Err(f) = result {
        return f.report(global, Some(&name));
    }
    match global.output {
        OutputFormat::Json => print_json(&json!({
            "name": name,
            "action": "deleted",
            "files_kept": args.keep_files,
        })),
        OutputFormat::Text if args.keep_files => outln!(
            "deleted certificate '{name}' from the store (its files were kept; nothing renews them)"
        ),
        OutputFormat::Text => outln!("deleted certificate '{name}' and its files"),
    }
    exit::OK
}

pub(crate) async fn rename(global: &GlobalArgs, args: RenameArgs) -> u8 {
    let result = async {
        let store = open(global)?;
        certsmith_core::store::check_cert_name(&args.new).map_err(|e| {
            Failure::usage(e.to_string(), Some("use a plain name such as example.com"))
        })?;
        if store
            .load_lineage(&args.old)
            .map_err(IssueError::from)?
            .is_none()
        {
            return Err(unknown(&store, &args.old));
        }
        let (s, old, new) = (store.clone(), args.old.clone(), args.new.clone());
        blocking(move || s.rename_cert(&old, &new)).await
    }
    .await;
    if let Err(f) = result {
        return f.report(global, Some(&args.old));
    }
    match global.output {
        OutputFormat::Json => print_json(&json!({
            "name": args.new,
            "action": "renamed",
            "old_name": args.old,
        })),
        OutputFormat::Text => outln!(
            "renamed certificate '{}' to '{}' (update the paths your servers read)",
            args.old,
            args.new
        ),
    }
    exit::OK
}
