//! The accounts kept in the store (`account.json`).
//!
//! Why this module exists: an account's private key lives in the store,
//! and this is the one place that reads or writes it. It reaches the store
//! only through the account methods of [`Storage`](crate::store::Storage)
//! and knows nothing of how a backend keeps them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use instant_acme as ia;
use serde::{Deserialize, Serialize};

use super::AcmeClient;
use super::jws::JwsKey;
use crate::error::IssueError;
use crate::store::{AccountKey, AccountSlot, Store, StoreError};

/// The store's id of the account of a CA: a digest of its directory URL.
/// A state directory holds one account per CA directory.
pub fn account_id(directory_url: &str) -> String {
    short_digest(directory_url.as_bytes())
}

/// The id certsmith 0.1 gave an account: a digest of the directory URL and
/// the contact. Accounts stored under such ids are still found (see
/// [`AcmeClient::account`](super::AcmeClient::account)) and stay where they are.
pub fn legacy_account_id(directory_url: &str, contact: &[String]) -> String {
    let mut input = directory_url.as_bytes().to_vec();
    input.push(b'\n');
    input.extend_from_slice(contact.join(",").as_bytes());
    short_digest(&input)
}

fn short_digest(input: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, input);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `account.json`. Holds the account's private key: never `Debug`.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredAccount {
    directory: String,
    contact: Vec<String>,
    pub(super) account_url: String,
    created_at: String,
    /// instant-acme's `AccountCredentials`: the account URL and private key.
    credentials: serde_json::Value,
    /// Set by `certsmith account deactivate`: the account is unusable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deactivated_at: Option<String>,
    /// Set by `certsmith account rollover`: when the key last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_changed_at: Option<String>,
}

/// Now, as the timestamps of `account.json` are written.
fn now() -> String {
    crate::timefmt::now_rfc3339()
}

fn corrupt(path: &Path, reason: String) -> IssueError {
    StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    }
    .into()
}

fn serialize_error(e: serde_json::Error) -> IssueError {
    IssueError::Internal(format!("cannot serialize the account: {e}"))
}

impl StoredAccount {
    /// A new account of `directory` for `contact`, created now.
    pub(super) fn new(
        directory: String,
        contact: Vec<String>,
        account_url: String,
        creds: &ia::AccountCredentials,
    ) -> Result<StoredAccount, IssueError> {
        Ok(StoredAccount {
            directory,
            contact,
            account_url,
            created_at: now(),
            credentials: serde_json::to_value(creds).map_err(serialize_error)?,
            deactivated_at: None,
            key_changed_at: None,
        })
    }

    /// Parses `account.json` (read from `path`).
    fn parse(bytes: &[u8], path: &Path) -> Result<StoredAccount, IssueError> {
        serde_json::from_slice(bytes).map_err(|e| corrupt(path, e.to_string()))
    }

    /// Refuses an account this store has seen deactivated: the CA would
    /// refuse it too, with a less helpful message.
    pub(super) fn ensure_active(&self, path: &Path) -> Result<(), IssueError> {
        match &self.deactivated_at {
            Some(at) => Err(IssueError::AccountDeactivated {
                url: self.account_url.clone(),
                at: at.clone(),
                path: path.to_path_buf(),
            }),
            None => Ok(()),
        }
    }

    /// The credentials, for instant-acme.
    pub(super) fn credentials(&self, path: &Path) -> Result<ia::AccountCredentials, IssueError> {
        serde_json::from_value(self.credentials.clone())
            .map_err(|e| corrupt(path, format!("credentials: {e}")))
    }

    /// The account key, to sign with or describe.
    pub(super) fn key(&self, path: &Path) -> Result<JwsKey, IssueError> {
        let creds = self.credentials(path)?;
        JwsKey::from_der(creds.private_key().secret_pkcs8_der())
            .map_err(|e| corrupt(path, format!("account key: {e}")))
    }

    /// Records that the key changed to the one in `creds`, now.
    pub(super) fn key_changed(&mut self, creds: &ia::AccountCredentials) -> Result<(), IssueError> {
        self.credentials = serde_json::to_value(creds).map_err(serialize_error)?;
        self.key_changed_at = Some(now());
        Ok(())
    }

    /// Records that the CA deactivated the account, now.
    pub(super) fn deactivated(&mut self) {
        self.deactivated_at = Some(now());
    }

    /// What `certsmith account show` says about it (stored at `path`;
    /// `in_use` as [`stored_accounts`] says).
    pub(super) fn summary(self, path: PathBuf, in_use: bool) -> Result<AccountSummary, IssueError> {
        let key = self.key(&path)?;
        Ok(AccountSummary {
            url: self.account_url,
            server: self.directory,
            contact: self.contact,
            key_type: key.key_type().to_owned(),
            key_thumbprint: key.thumbprint(),
            created_at: self.created_at,
            key_changed_at: self.key_changed_at,
            deactivated_at: self.deactivated_at,
            path,
            in_use,
        })
    }
}

/// A stored account, as `certsmith account show` describes it. Holds no key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountSummary {
    /// The account URL at the CA.
    pub url: String,
    /// The directory URL.
    pub server: String,
    /// Contact URLs (`mailto:`).
    pub contact: Vec<String>,
    /// The account key's type, e.g. `ec-p256`.
    pub key_type: String,
    /// The account key's JWK thumbprint
    /// ([RFC 7638](https://www.rfc-editor.org/rfc/rfc7638)), base64url.
    pub key_thumbprint: String,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// When its key last changed, RFC 3339.
    pub key_changed_at: Option<String>,
    /// When it was deactivated, RFC 3339.
    pub deactivated_at: Option<String>,
    /// Its `account.json`.
    pub path: PathBuf,
    /// Whether it is the account certsmith uses for its CA directory (a
    /// state directory of certsmith 0.1 may hold several per directory,
    /// one per contact; the others are kept, unused).
    pub in_use: bool,
}

/// Every account in `store`, sorted by server then contact; `in_use`
/// marks the one of each CA directory that certsmith uses.
pub fn stored_accounts(store: &Store) -> Result<Vec<AccountSummary>, IssueError> {
    let parsed = store
        .accounts()?
        .into_iter()
        .map(|doc| {
            let stored = StoredAccount::parse(&doc.json, &doc.location)?;
            Ok((doc.key, stored, doc.location))
        })
        .collect::<Result<Vec<_>, IssueError>>()?;
    // The one in use of each (CA host, directory).
    let mut best: BTreeMap<(&str, &str), (InUseRank, usize)> = BTreeMap::new();
    for (i, (key, stored, _)) in parsed.iter().enumerate() {
        let rank = stored.rank(key);
        let slot = best
            .entry((key.ca_host.as_str(), stored.directory.as_str()))
            .or_insert((rank.clone(), i));
        if rank < slot.0 {
            *slot = (rank, i);
        }
    }
    let chosen: BTreeSet<usize> = best.values().map(|(_, i)| *i).collect();
    let mut out = parsed
        .into_iter()
        .enumerate()
        .map(|(i, (_, stored, path))| stored.summary(path, chosen.contains(&i)))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by(|a, b| (&a.server, &a.contact).cmp(&(&b.server, &b.contact)));
    Ok(out)
}

/// Orders the accounts stored for one CA directory, the one in use first:
/// the one under the directory's id ([`account_id`]); else, of the
/// accounts certsmith 0.1 kept per contact, an active one, then one with a
/// contact, then the oldest.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct InUseRank {
    not_current_id: bool,
    deactivated: bool,
    no_contact: bool,
    created_at: String,
}

/// A stored account of this CA: the document, its key in the store and
/// where it is.
pub(super) struct FoundAccount {
    pub(super) stored: StoredAccount,
    pub(super) key: AccountKey,
    pub(super) path: PathBuf,
}

impl StoredAccount {
    fn rank(&self, key: &AccountKey) -> InUseRank {
        InUseRank {
            not_current_id: key.id != account_id(&self.directory),
            deactivated: self.deactivated_at.is_some(),
            no_contact: self.contact.is_empty(),
            created_at: self.created_at.clone(),
        }
    }

    /// The contact URLs.
    pub(super) fn contact(&self) -> &[String] {
        &self.contact
    }

    /// Records the contact the CA now has.
    pub(super) fn set_contact(&mut self, contact: Vec<String>) {
        self.contact = contact;
    }
}

impl AcmeClient {
    /// The store's key of the account with id `id` at this CA.
    fn account_key(&self, id: &str) -> AccountKey {
        AccountKey {
            ca_host: self.ca_host(),
            id: id.to_owned(),
        }
    }

    /// The key a new account of this CA is stored under.
    pub(super) fn new_account_key(&self) -> AccountKey {
        self.account_key(&account_id(&self.directory_url))
    }

    /// The stored account of this CA directory, whatever its contact; `None`
    /// when there is none. One stored under the directory's id
    /// ([`account_id`]) is it; else one stored by certsmith 0.1 under a
    /// (directory, contact) id is, chosen as [`stored_accounts`] marks it
    /// in use. Nothing is moved or rewritten.
    pub(super) fn find_stored(&self, store: &Store) -> Result<Option<FoundAccount>, IssueError> {
        let key = self.new_account_key();
        if let Some(doc) = store.load_account(&key)? {
            return Ok(Some(FoundAccount {
                stored: StoredAccount::parse(&doc.json, &doc.location)?,
                key: doc.key,
                path: doc.location,
            }));
        }
        let mut best: Option<(InUseRank, FoundAccount)> = None;
        for doc in store.accounts()? {
            if doc.key.ca_host != key.ca_host {
                continue;
            }
            let stored = StoredAccount::parse(&doc.json, &doc.location)?;
            if stored.directory != self.directory_url {
                continue;
            }
            let rank = stored.rank(&doc.key);
            if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                best = Some((
                    rank,
                    FoundAccount {
                        stored,
                        key: doc.key,
                        path: doc.location,
                    },
                ));
            }
        }
        Ok(best.map(|(_, found)| found))
    }

    /// The stored account of this CA, loaded without creating one; an error
    /// naming where it was looked for when there is none.
    pub(super) fn stored_account(&self, store: &Store) -> Result<FoundAccount, IssueError> {
        if let Some(found) = self.find_stored(store)? {
            return Ok(found);
        }
        Err(IssueError::NoStoredAccount {
            server: self.directory_url.clone(),
            location: store.account_location(&self.new_account_key()),
        })
    }

    /// Describes the stored account of this CA, without contacting it.
    pub fn describe_account(&self, store: &Store) -> Result<Option<AccountSummary>, IssueError> {
        match self.find_stored(store)? {
            Some(found) => Ok(Some(found.stored.summary(found.path, true)?)),
            None => Ok(None),
        }
    }

    /// Writes the stored account (0600, atomically, under the store lock)
    /// under `key` (where it was found), replacing what is there; returns
    /// where it is.
    pub(super) async fn rewrite_account(
        &self,
        store: &Store,
        key: &AccountKey,
        stored: &StoredAccount,
    ) -> Result<PathBuf, IssueError> {
        let json = serde_json::to_vec_pretty(stored).map_err(serialize_error)?;
        let (store, key) = (store.clone(), key.clone());
        let doc = tokio::task::spawn_blocking(move || store.replace_account(&key, &json))
            .await
            .map_err(|e| IssueError::Internal(format!("account writer: {e}")))??;
        Ok(doc.location)
    }

    /// Stores a newly created account unless another process stored one
    /// for this directory first; then that one is returned and this one is
    /// left unused.
    pub(super) async fn store_new_account(
        &self,
        store: &Store,
        stored: &StoredAccount,
    ) -> Result<Option<FoundAccount>, IssueError> {
        let json = serde_json::to_vec_pretty(stored).map_err(serialize_error)?;
        let (store, key) = (store.clone(), self.new_account_key());
        let slot = tokio::task::spawn_blocking(move || store.create_account(&key, &json))
            .await
            .map_err(|e| IssueError::Internal(format!("account writer: {e}")))??;
        match slot {
            AccountSlot::Existing(doc) => Ok(Some(FoundAccount {
                stored: StoredAccount::parse(&doc.json, &doc.location)?,
                key: doc.key,
                path: doc.location,
            })),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::LETSENCRYPT;

    #[test]
    fn account_ids_depend_on_the_directory_only() {
        let a = account_id(LETSENCRYPT);
        assert_eq!(a.len(), 16);
        assert_eq!(a, account_id(LETSENCRYPT));
        assert_ne!(a, account_id("https://localhost:14000/dir"));
        // The ids of certsmith 0.1 (the fixture of tests/tests/store_compat.rs).
        assert_eq!(
            legacy_account_id(
                "https://127.0.0.1:14000/dir",
                &["mailto:ops@example.test".to_owned()]
            ),
            "903c911c8beb2539"
        );
        assert_ne!(
            legacy_account_id(LETSENCRYPT, &[]),
            legacy_account_id(LETSENCRYPT, &["mailto:a@example.com".to_owned()])
        );
    }

    fn credentials(client: &AcmeClient, url: &str) -> (ia::AccountCredentials, String) {
        use base64::Engine as _;
        let key = crate::keys::generate_key(crate::keys::KeyType::EcP256).expect("key");
        let der = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.serialize_der());
        let creds = serde_json::from_value(serde_json::json!({
            "id": url,
            "key_pkcs8": der,
            "directory": client.directory_url(),
        }))
        .expect("credentials");
        (creds, der)
    }

    /// An account written through the client is found again whatever the
    /// contact asked for, listed, and described without its key; a
    /// deactivated one is refused.
    #[tokio::test]
    async fn stored_accounts_round_trip_through_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        assert!(stored_accounts(&store).expect("empty").is_empty());
        let client = AcmeClient::new("https://localhost:14000/dir", None).expect("client");
        let e = client.stored_account(&store).err().expect("no account yet");
        assert!(matches!(e, IssueError::NoStoredAccount { .. }), "{e}");
        let (creds, secret) = credentials(&client, "https://localhost:14000/acct/1");
        let mut stored = StoredAccount::new(
            client.directory_url().to_owned(),
            vec!["mailto:admin@example.com".to_owned()],
            "https://localhost:14000/acct/1".to_owned(),
            &creds,
        )
        .expect("new");
        let key = client.new_account_key();
        let path = client
            .rewrite_account(&store, &key, &stored)
            .await
            .expect("saved");
        let listed = stored_accounts(&store).expect("listed");
        assert_eq!(listed.len(), 1);
        let summary = &listed[0];
        assert_eq!(summary.path, path);
        assert!(summary.in_use);
        assert_eq!(summary.url, "https://localhost:14000/acct/1");
        assert_eq!(summary.contact, ["mailto:admin@example.com"]);
        assert_eq!(summary.key_type, "ec-p256");
        assert!(crate::timefmt::parse_time(&summary.created_at).is_some());
        assert_eq!(
            client.describe_account(&store).expect("described"),
            Some(summary.clone())
        );
        let other = AcmeClient::new("https://localhost:14000/other", None).expect("client");
        assert_eq!(other.describe_account(&store).expect("none"), None);
        stored.deactivated();
        client
            .rewrite_account(&store, &key, &stored)
            .await
            .expect("saved");
        let found = client.stored_account(&store).expect("found");
        let e = found
            .stored
            .ensure_active(&found.path)
            .expect_err("deactivated");
        assert!(matches!(e, IssueError::AccountDeactivated { .. }), "{e}");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains(&secret), "the key is stored");
        let shown = format!("{:?}", stored_accounts(&store).expect("listed"));
        assert!(!shown.contains(&secret), "a summary never holds the key");
    }

    /// Accounts stored by certsmith 0.1, one per (directory, contact), are
    /// found where they are: an active one with a contact first; one under
    /// the directory's own id wins over them all.
    #[tokio::test]
    async fn accounts_of_0_1_are_found_under_their_old_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let client = AcmeClient::new("https://localhost:14000/dir", None).expect("client");
        let save = async |url: &str, contact: &[&str], deactivated: bool, id: Option<String>| {
            let contact: Vec<String> = contact.iter().map(|c| (*c).to_owned()).collect();
            let (creds, _) = credentials(&client, url);
            let mut stored = StoredAccount::new(
                client.directory_url().to_owned(),
                contact.clone(),
                url.to_owned(),
                &creds,
            )
            .expect("new");
            if deactivated {
                stored.deactivated();
            }
            let id = id.unwrap_or_else(|| legacy_account_id(client.directory_url(), &contact));
            client
                .rewrite_account(&store, &client.account_key(&id), &stored)
                .await
                .expect("saved")
        };
        save("https://x/acct/none", &[], false, None).await;
        save(
            "https://x/acct/old",
            &["mailto:old@example.com"],
            true,
            None,
        )
        .await;
        let ops = save(
            "https://x/acct/ops",
            &["mailto:ops@example.com"],
            false,
            None,
        )
        .await;
        let found = client.stored_account(&store).expect("found");
        assert_eq!(found.stored.account_url, "https://x/acct/ops");
        assert_eq!(found.path, ops);
        let in_use: Vec<String> = stored_accounts(&store)
            .expect("listed")
            .into_iter()
            .filter(|a| a.in_use)
            .map(|a| a.url)
            .collect();
        assert_eq!(in_use, ["https://x/acct/ops"]);
        save(
            "https://x/acct/new",
            &[],
            false,
            Some(account_id(client.directory_url())),
        )
        .await;
        let found = client.stored_account(&store).expect("found");
        assert_eq!(found.stored.account_url, "https://x/acct/new");
        assert_eq!(
            stored_accounts(&store).expect("listed").len(),
            4,
            "nothing removed"
        );
    }
}
