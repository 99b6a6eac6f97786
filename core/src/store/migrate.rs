//! `certsmith store migrate`: everything one store holds, copied into
//! another (a state directory into a shared database, and back).
//!
//! Why this module exists: moving from one machine's state directory to
//! a fleet's database (or leaving it) must keep what the CA knows about:
//! the accounts (losing one loses its certificates' revocation and its
//! rate-limit history), every version of every certificate with its
//! number, the orders finalized but not yet stored, the challenges still
//! to clean up and the rate limits in force. It works through
//! [`Storage`] alone, so every direction is the same code.
//!
//! Nothing in the destination is ever replaced: every conflict is found
//! before anything is copied, and the migration is refused naming them
//! all. Afterwards everything is read back from the destination and
//! compared with the source.

use std::fmt;

use super::{
    AccountSlot, CertFiles, JournalEntry, Lineage, PendingOrder, Storage, StoreError, VersionFiles,
};

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The source could not be read.
    #[error("reading the source {location}: {source}")]
    Source {
        /// The source store.
        location: String,
        /// What failed.
        source: StoreError,
    },
    /// The destination could not be read or written.
    #[error("writing the destination {location}: {source}")]
    Destination {
        /// The destination store.
        location: String,
        /// What failed.
        source: StoreError,
    },
    /// Source and destination are the same store.
    #[error("the source and the destination are the same store ({0})")]
    SameStore(String),
    /// The destination already holds something the source has, with
    /// other content; nothing was copied.
    #[error(
        "the destination {location} already holds {}: nothing was copied",
        .conflicts.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    Conflicts {
        /// The destination store.
        location: String,
        /// Every conflict found.
        conflicts: Vec<Conflict>,
    },
    /// The source is inconsistent: its lineage lists a version it cannot
    /// return.
    #[error(
        "certificate '{name}' in {location}: version {version} is listed in its lineage but cannot be read"
    )]
    MissingVersion {
        /// The source store.
        location: String,
        /// The certificate.
        name: String,
        /// The version.
        version: u32,
    },
    /// What was read back from the destination differs from the source.
    #[error("after copying, {what} in {location} differs from the source")]
    Mismatch {
        /// The destination store.
        location: String,
        /// What differs, e.g. `certificate 'a' version 2 privkey.pem`.
        what: String,
    },
}

/// Something the destination already holds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Conflict {
    /// An account under the same key, with other content.
    Account {
        /// The CA host.
        ca_host: String,
        /// The account id.
        id: String,
    },
    /// A certificate of the same name.
    Certificate(String),
    /// A pending order of a certificate of the same name.
    PendingOrder(String),
    /// A journal entry with the same id and other content.
    JournalEntry(String),
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::Account { ca_host, id } => {
                write!(f, "a different account {id} for {ca_host}")
            }
            Conflict::Certificate(n) => write!(f, "a certificate named '{n}'"),
            Conflict::PendingOrder(n) => write!(f, "a pending order of '{n}'"),
            Conflict::JournalEntry(id) => write!(f, "a different journal entry {id}"),
        }
    }
}

/// What a migration reports as it goes, for a progress display.
#[derive(Debug)]
#[non_exhaustive]
pub enum MigrateEvent<'a> {
    /// The conflict check passed; copying starts.
    Checked {
        /// Accounts to copy (identical ones already there excluded).
        accounts: usize,
        /// Certificates to copy.
        certificates: usize,
    },
    /// An account was copied.
    Account {
        /// Its CA host.
        ca_host: &'a str,
    },
    /// A certificate was copied with its versions.
    Certificate {
        /// The name.
        name: &'a str,
        /// How many versions.
        versions: usize,
    },
    /// Everything was read back from the destination and matched.
    Verified,
}

/// What a migration copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrateReport {
    /// The source store.
    pub from: String,
    /// The destination store.
    pub to: String,
    /// Accounts copied.
    pub accounts: usize,
    /// Accounts the destination already held, identical.
    pub accounts_present: usize,
    /// Certificates copied.
    pub certificates: usize,
    /// Their versions.
    pub versions: usize,
    /// Pending orders copied.
    pub pending_orders: usize,
    /// Journal entries copied (identical ones already there included).
    pub journal_entries: usize,
    /// Rate-limit records copied.
    pub rate_limits: usize,
    /// Whether everything was read back from the destination and matched
    /// (always true in a report: a mismatch is an error).
    pub verified: bool,
}

/// Copies everything `from` holds into `to` (see the module docs), then
/// verifies it. Only reads `from`. Certificates are copied one at a time
/// (their versions in memory), so a store of any size fits.
///
/// A pending order is copied for each certificate with a lineage; the
/// trait cannot list pending orders of certificates never stored (a first
/// issuance interrupted after finalization), so those stay behind.
pub fn migrate(
    from: &dyn Storage,
    to: &dyn Storage,
    progress: &mut dyn FnMut(MigrateEvent<'_>),
) -> Result<MigrateReport, MigrateError> {
    let src = |source| MigrateError::Source {
        location: from.location(),
        source,
    };
    let dst = |source| MigrateError::Destination {
        location: to.location(),
        source,
    };
    if from.location() == to.location() {
        return Err(MigrateError::SameStore(from.location()));
    }
    let mut report = MigrateReport {
        from: from.location(),
        to: to.location(),
        ..MigrateReport::default()
    };

    // 1. Everything small is read at once; certificates by name.
    let accounts = from.accounts().map_err(src)?;
    let names = from.cert_names().map_err(src)?;
    let journal = from.journal_entries().map_err(src)?;
    let rate_limits = from.rate_limits().map_err(src)?;

    // 2. Conflicts, before anything is written.
    let mut conflicts = Vec::new();
    let mut new_accounts = Vec::new();
    for account in &accounts {
        match to.load_account(&account.key).map_err(dst)? {
            Some(have) if have.json == account.json => report.accounts_present += 1,
            Some(_) => conflicts.push(Conflict::Account {
                ca_host: account.key.ca_host.clone(),
                id: account.key.id.clone(),
            }),
            None => new_accounts.push(account),
        }
    }
    for name in &names {
        // Versions left without a lineage (a certificate deleted with
        // --keep-files) would make `restore_cert` refuse midway.
        let versions = from
            .load_lineage(name)
            .map_err(src)?
            .map(|l| l.versions)
            .unwrap_or_default();
        let mut taken = to.load_lineage(name).map_err(dst)?.is_some()
            || to.current_version(name).map_err(dst)?.is_some();
        for v in &versions {
            if taken {
                break;
            }
            taken = to
                .read_version(name, Some(v.version))
                .map_err(dst)?
                .is_some();
        }
        if taken {
            conflicts.push(Conflict::Certificate(name.clone()));
        } else if to.pending_order(name).map_err(dst)?.is_some() {
            conflicts.push(Conflict::PendingOrder(name.clone()));
        }
    }
    let have_journal = to.journal_entries().map_err(dst)?;
    let mut new_journal = Vec::new();
    for entry in &journal {
        match have_journal.iter().find(|e| e.id == entry.id) {
            Some(have) if same_entry(have, entry) => {}
            Some(_) => conflicts.push(Conflict::JournalEntry(entry.id.clone())),
            None => new_journal.push(entry),
        }
    }
    if !conflicts.is_empty() {
        return Err(MigrateError::Conflicts {
            location: to.location(),
            conflicts,
        });
    }
    progress(MigrateEvent::Checked {
        accounts: new_accounts.len(),
        certificates: names.len(),
    });

    // 3. Copy.
    for account in &new_accounts {
        match to
            .create_account(&account.key, &account.json)
            .map_err(dst)?
        {
            AccountSlot::Created(_) => {}
            // Stored meanwhile by another process: identical or a conflict.
            AccountSlot::Existing(have) if have.json == account.json => {}
            AccountSlot::Existing(_) => {
                return Err(MigrateError::Conflicts {
                    location: to.location(),
                    conflicts: vec![Conflict::Account {
                        ca_host: account.key.ca_host.clone(),
                        id: account.key.id.clone(),
                    }],
                });
            }
        }
        report.accounts += 1;
        progress(MigrateEvent::Account {
            ca_host: &account.key.ca_host,
        });
    }
    let mut copied = Vec::with_capacity(names.len());
    for name in &names {
        let Some(cert) = read_cert(from, name)? else {
            // Removed from the source since it was listed.
            continue;
        };
        to.restore_cert(name, &cert.lineage, &cert.versions, cert.current)
            .map_err(|e| match e {
                StoreError::Exists { .. } => MigrateError::Conflicts {
                    location: to.location(),
                    conflicts: vec![Conflict::Certificate(name.clone())],
                },
                e => dst(e),
            })?;
        if let Some(order) = &cert.pending {
            to.put_pending_order(name, order).map_err(dst)?;
            report.pending_orders += 1;
        }
        report.certificates += 1;
        report.versions += cert.versions.len();
        progress(MigrateEvent::Certificate {
            name,
            versions: cert.versions.len(),
        });
        copied.push(name.clone());
    }
    for entry in &new_journal {
        to.put_journal_entry(entry).map_err(dst)?;
    }
    report.journal_entries = journal.len();
    for record in &rate_limits {
        to.record_rate_limit(record).map_err(dst)?;
    }
    report.rate_limits = rate_limits.len();

    // 4. Read everything back.
    let mismatch = |what: String| MigrateError::Mismatch {
        location: to.location(),
        what,
    };
    for account in &accounts {
        let have = to.load_account(&account.key).map_err(dst)?;
        if have.is_none_or(|h| h.json != account.json) {
            return Err(mismatch(format!(
                "account {} of {}",
                account.key.id, account.key.ca_host
            )));
        }
    }
    for name in &copied {
        let Some(want) = read_cert(from, name)? else {
            continue;
        };
        let Some(have) = read_cert(to, name).map_err(|e| match e {
            MigrateError::Source { source, .. } => dst(source),
            e => e,
        })?
        else {
            return Err(mismatch(format!("certificate '{name}'")));
        };
        if have.lineage != want.lineage {
            return Err(mismatch(format!("the lineage of certificate '{name}'")));
        }
        if have.current != want.current {
            return Err(mismatch(format!(
                "the current version of certificate '{name}'"
            )));
        }
        if have.versions.len() != want.versions.len() {
            return Err(mismatch(format!("the versions of certificate '{name}'")));
        }
        for (h, w) in have.versions.iter().zip(&want.versions) {
            if let Some(file) = differing_file(&h.files, &w.files) {
                return Err(mismatch(format!(
                    "certificate '{name}' version {} {file}",
                    w.version
                )));
            }
            if h.version != w.version {
                return Err(mismatch(format!(
                    "certificate '{name}' version {}",
                    w.version
                )));
            }
        }
        if !same_pending(have.pending.as_ref(), want.pending.as_ref()) {
            return Err(mismatch(format!("the pending order of '{name}'")));
        }
    }
    let have_journal = to.journal_entries().map_err(dst)?;
    for entry in &journal {
        if !have_journal
            .iter()
            .any(|h| h.id == entry.id && same_entry(h, entry))
        {
            return Err(mismatch(format!("journal entry {}", entry.id)));
        }
    }
    let have_limits = to.rate_limits().map_err(dst)?;
    let now = time::OffsetDateTime::now_utc();
    for record in &rate_limits {
        // A limit that has lifted may be forgotten by the destination.
        let in_force = crate::timefmt::parse_time(&record.until).is_some_and(|t| t > now);
        if in_force && !have_limits.contains(record) {
            return Err(mismatch(format!(
                "the rate limit of {} until {}",
                record.server, record.until
            )));
        }
    }
    report.verified = true;
    progress(MigrateEvent::Verified);
    Ok(report)
}

/// One certificate as read from a store.
struct CertCopy {
    lineage: Lineage,
    versions: Vec<VersionFiles>,
    current: Option<u32>,
    pending: Option<PendingOrder>,
}

/// Reads `name` with every version its lineage lists; `None` when it has
/// no lineage. Errors are [`MigrateError::Source`] (of `store`).
fn read_cert(store: &dyn Storage, name: &str) -> Result<Option<CertCopy>, MigrateError> {
    let err = |source| MigrateError::Source {
        location: store.location(),
        source,
    };
    let Some(lineage) = store.load_lineage(name).map_err(err)? else {
        return Ok(None);
    };
    let mut versions = Vec::with_capacity(lineage.versions.len());
    for record in &lineage.versions {
        match store
            .read_version(name, Some(record.version))
            .map_err(err)?
        {
            Some(v) => versions.push(v),
            None => {
                return Err(MigrateError::MissingVersion {
                    location: store.location(),
                    name: name.to_owned(),
                    version: record.version,
                });
            }
        }
    }
    let current = store.current_version(name).map_err(err)?;
    let pending = store.pending_order(name).map_err(err)?;
    Ok(Some(CertCopy {
        lineage,
        versions,
        current,
        pending,
    }))
}

/// The first file that differs between two versions, by its file name.
fn differing_file(a: &CertFiles, b: &CertFiles) -> Option<&'static str> {
    if a.cert_pem != b.cert_pem {
        Some(super::CERT_FILE)
    } else if a.chain_pem != b.chain_pem {
        Some(super::CHAIN_FILE)
    } else if a.fullchain_pem != b.fullchain_pem {
        Some(super::FULLCHAIN_FILE)
    } else if a.privkey_pem.as_ref().map(|k| k.expose())
        != b.privkey_pem.as_ref().map(|k| k.expose())
    {
        Some(super::PRIVKEY_FILE)
    } else if a.csr_pem != b.csr_pem {
        Some(super::CSR_FILE)
    } else {
        None
    }
}

/// Whether two journal entries are the same (as stored: their JSON).
fn same_entry(a: &JournalEntry, b: &JournalEntry) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// Whether two pending orders are the same (as stored: their JSON).
fn same_pending(a: Option<&PendingOrder>, b: Option<&PendingOrder>) -> bool {
    a.map(|a| serde_json::to_value(a).ok()) == b.map(|b| serde_json::to_value(b).ok())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use certsmith_plugin_api::{ChallengeRequest, ChallengeType};

    use super::*;
    use crate::store::{AccountKey, Store, VersionRecord};

    use crate::store::conformance::files;

    fn commit(store: &Store, name: &str, tag: &str) {
        let lineage = Lineage {
            domains: vec![name.to_owned()],
            solver: "standalone".into(),
            key_type: "ec-p256".into(),
            server: "https://ca.test/dir".into(),
            ..Lineage::default()
        };
        let record = VersionRecord {
            version: 0,
            serial: "01".into(),
            not_before: "2025-01-01T00:00:00Z".into(),
            not_after: "2025-04-01T00:00:00Z".into(),
            issued_at: "2025-01-01T00:00:01Z".into(),
        };
        store
            .commit_version(name, &files(tag), &lineage, record)
            .expect("commit");
    }

    fn entry(id: &str, token: &str) -> JournalEntry {
        JournalEntry {
            id: id.into(),
            created_unix: 1,
            pid: 1,
            pid_start: 0,
            boot_id: String::new(),
            solver: "webroot".into(),
            options: BTreeMap::new(),
            request: ChallengeRequest::new(ChallengeType::Http01, "j.test", token, "k", 1),
            presented: None,
        }
    }

    fn key() -> AccountKey {
        AccountKey {
            ca_host: "ca.test".into(),
            id: "acct".into(),
        }
    }

    #[test]
    fn every_conflict_is_named_and_nothing_is_copied() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let from = Store::open(tmp.path().join("from")).expect("open");
        let to = Store::open(tmp.path().join("to")).expect("open");
        from.create_account(&key(), b"{\"a\":1}").expect("account");
        commit(&from, "one.test", "1");
        commit(&from, "two.test", "2");
        from.put_journal_entry(&entry("j1", "t1")).expect("journal");
        from.put_journal_entry(&entry("j2", "t2")).expect("journal");
        // The destination: another account under the same key, a
        // certificate of the same name, a different journal entry j1 and
        // the same j2.
        to.create_account(&key(), b"{\"a\":2}").expect("account");
        commit(&to, "two.test", "other");
        to.put_journal_entry(&entry("j1", "other"))
            .expect("journal");
        to.put_journal_entry(&entry("j2", "t2")).expect("journal");

        let e = migrate(&*from, &*to, &mut |_| {}).expect_err("refused");
        let MigrateError::Conflicts { conflicts, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(
            conflicts,
            &[
                Conflict::Account {
                    ca_host: "ca.test".into(),
                    id: "acct".into()
                },
                Conflict::Certificate("two.test".into()),
                Conflict::JournalEntry("j1".into()),
            ]
        );
        assert!(
            e.to_string().contains("a certificate named 'two.test'"),
            "{e}"
        );
        assert!(to.load_lineage("one.test").expect("read").is_none());
        assert_eq!(to.journal_entries().expect("read").len(), 2);
    }

    #[test]
    fn identical_accounts_and_entries_are_fine_and_the_copy_is_verified() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let from = Store::open(tmp.path().join("from")).expect("open");
        let to = Store::open(tmp.path().join("to")).expect("open");
        from.create_account(&key(), b"{\"a\":1}").expect("account");
        to.create_account(&key(), b"{\"a\":1}").expect("account");
        commit(&from, "one.test", "1");
        commit(&from, "one.test", "2");
        from.put_journal_entry(&entry("j1", "t1")).expect("journal");
        to.put_journal_entry(&entry("j1", "t1")).expect("journal");
        let mut events = Vec::new();
        let report = migrate(&*from, &*to, &mut |e| events.push(format!("{e:?}"))).expect("ok");
        assert_eq!(
            (
                report.accounts,
                report.accounts_present,
                report.certificates,
                report.versions,
                report.verified
            ),
            (0, 1, 1, 2, true)
        );
        assert!(events.last().is_some_and(|e| e == "Verified"), "{events:?}");
        let v1 = to
            .read_version("one.test", Some(1))
            .expect("read")
            .expect("v1");
        assert_eq!(v1.files.cert_pem, "CERT 1\n");
        assert_eq!(to.current_version("one.test").expect("read"), Some(2));
        // The same store on both sides is refused.
        let e = migrate(&*from, &*from, &mut |_| {}).expect_err("same");
        assert!(matches!(e, MigrateError::SameStore(_)), "{e}");
    }
}
