//! The accounts kept in the store (`account.json`).
//!
//! Why this module exists: an account's private key lives in the store,
//! and this is the one place that reads or writes it. It reaches the store
//! only through the account methods of [`Storage`](crate::store::Storage)
//! and knows nothing of how a backend keeps them.

use std::path::{Path, PathBuf};

use instant_acme as ia;
use serde::{Deserialize, Serialize};

use super::jws::JwsKey;
use super::{AccountOptions, AcmeClient};
use crate::error::IssueError;
use crate::store::{AccountKey, AccountSlot, Store, StoreError};

/// The store's id of an account: a digest of the directory URL and contact.
pub fn account_id(directory_url: &str, contact: &[String]) -> String {
    let mut input = directory_url.as_bytes().to_vec();
    input.push(b'\n');
    input.extend_from_slice(contact.join(",").as_bytes());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
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

    /// What `certsmith account show` says about it (stored at `path`).
    pub(super) fn summary(self, path: PathBuf) -> Result<AccountSummary, IssueError> {
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
}

/// Every account in `store`, sorted by server then contact.
pub fn stored_accounts(store: &Store) -> Result<Vec<AccountSummary>, IssueError> {
    let mut out = store
        .accounts()?
        .into_iter()
        .map(|doc| StoredAccount::parse(&doc.json, &doc.location)?.summary(doc.location))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by(|a, b| (&a.server, &a.contact).cmp(&(&b.server, &b.contact)));
    Ok(out)
}

impl AcmeClient {
    /// The store's key of the account with id `id` at this CA.
    fn account_key(&self, id: &str) -> AccountKey {
        AccountKey {
            ca_host: self.ca_host(),
            id: id.to_owned(),
        }
    }

    /// The stored account of this CA with the id `id`, and its path; `None`
    /// when there is none.
    pub(super) fn load_stored(
        &self,
        store: &Store,
        id: &str,
    ) -> Result<Option<(StoredAccount, PathBuf)>, IssueError> {
        match store.load_account(&self.account_key(id))? {
            Some(doc) => Ok(Some((
                StoredAccount::parse(&doc.json, &doc.location)?,
                doc.location,
            ))),
            None => Ok(None),
        }
    }

    /// The stored account for (this directory, `opts` contact), loaded
    /// without creating one; an error naming where it was looked for when
    /// there is none.
    pub(super) fn stored_account(
        &self,
        store: &Store,
        opts: &AccountOptions,
    ) -> Result<(StoredAccount, PathBuf), IssueError> {
        let contact = opts.contact()?;
        let id = account_id(&self.directory_url, &contact);
        if let Some(found) = self.load_stored(store, &id)? {
            return Ok(found);
        }
        let who = if contact.is_empty() {
            "without a contact".to_owned()
        } else {
            format!("for {}", contact.join(", "))
        };
        Err(IssueError::NoStoredAccount {
            server: self.directory_url.clone(),
            who,
            location: store.account_location(&self.account_key(&id)),
        })
    }

    /// Describes the stored account for `opts`, without contacting the CA.
    pub fn describe_account(
        &self,
        store: &Store,
        opts: &AccountOptions,
    ) -> Result<Option<AccountSummary>, IssueError> {
        let contact = opts.contact()?;
        let id = account_id(&self.directory_url, &contact);
        match self.load_stored(store, &id)? {
            Some((stored, path)) => Ok(Some(stored.summary(path)?)),
            None => Ok(None),
        }
    }

    /// Writes the stored account (0600, atomically, under the store lock)
    /// under its id for this directory and contact, replacing any stored
    /// one; returns where it is.
    pub(super) async fn rewrite_account(
        &self,
        store: &Store,
        stored: &StoredAccount,
    ) -> Result<PathBuf, IssueError> {
        let json = serde_json::to_vec_pretty(stored).map_err(serialize_error)?;
        let (store, key) = (
            store.clone(),
            self.account_key(&account_id(&self.directory_url, &stored.contact)),
        );
        let doc = tokio::task::spawn_blocking(move || store.replace_account(&key, &json))
            .await
            .map_err(|e| IssueError::Internal(format!("account writer: {e}")))??;
        Ok(doc.location)
    }

    /// Stores a newly created account unless another process stored one
    /// for the same (directory, contact) first; then that one is returned
    /// (with its location) and this one is left unused.
    pub(super) async fn store_new_account(
        &self,
        store: &Store,
        stored: &StoredAccount,
    ) -> Result<Option<(StoredAccount, PathBuf)>, IssueError> {
        let json = serde_json::to_vec_pretty(stored).map_err(serialize_error)?;
        let (store, key) = (
            store.clone(),
            self.account_key(&account_id(&self.directory_url, &stored.contact)),
        );
        let slot = tokio::task::spawn_blocking(move || store.create_account(&key, &json))
            .await
            .map_err(|e| IssueError::Internal(format!("account writer: {e}")))??;
        match slot {
            AccountSlot::Existing(doc) => Ok(Some((
                StoredAccount::parse(&doc.json, &doc.location)?,
                doc.location,
            ))),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::LETSENCRYPT;

    #[test]
    fn account_ids_differ_by_contact() {
        let a = account_id(LETSENCRYPT, &[]);
        let b = account_id(LETSENCRYPT, &["mailto:a@example.com".to_owned()]);
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert_eq!(a, account_id(LETSENCRYPT, &[]));
    }

    /// An account written through the client is found again by id, listed,
    /// and described without its key; a deactivated one is refused.
    #[tokio::test]
    async fn stored_accounts_round_trip_through_the_store() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        assert!(stored_accounts(&store).expect("empty").is_empty());
        let client = AcmeClient::new("https://localhost:14000/dir", None).expect("client");
        let key = crate::keys::generate_key(crate::keys::KeyType::EcP256).expect("key");
        let creds: ia::AccountCredentials = serde_json::from_value(serde_json::json!({
            "id": "https://localhost:14000/acct/1",
            "key_pkcs8": base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(key.serialize_der()),
            "directory": client.directory_url(),
        }))
        .expect("credentials");
        let opts = AccountOptions {
            email: Some("admin@example.com".into()),
            ..Default::default()
        };
        let mut stored = StoredAccount::new(
            client.directory_url().to_owned(),
            opts.contact().expect("contact"),
            "https://localhost:14000/acct/1".to_owned(),
            &creds,
        )
        .expect("new");
        let path = client
            .rewrite_account(&store, &stored)
            .await
            .expect("saved");
        let listed = stored_accounts(&store).expect("listed");
        assert_eq!(listed.len(), 1);
        let summary = &listed[0];
        assert_eq!(summary.path, path);
        assert_eq!(summary.url, "https://localhost:14000/acct/1");
        assert_eq!(summary.contact, ["mailto:admin@example.com"]);
        assert_eq!(summary.key_type, "ec-p256");
        assert!(crate::timefmt::parse_time(&summary.created_at).is_some());
        assert_eq!(
            client.describe_account(&store, &opts).expect("described"),
            Some(summary.clone())
        );
        assert_eq!(
            client
                .describe_account(&store, &AccountOptions::default())
                .expect("none"),
            None
        );
        let e = client
            .stored_account(&store, &AccountOptions::default())
            .err()
            .expect("no account without a contact");
        assert!(e.to_string().contains("without a contact"), "{e}");
        stored.deactivated();
        client
            .rewrite_account(&store, &stored)
            .await
            .expect("saved");
        let (again, path) = client.stored_account(&store, &opts).expect("found");
        let e = again.ensure_active(&path).expect_err("deactivated");
        assert!(matches!(e, IssueError::AccountDeactivated { .. }), "{e}");
        let text = std::fs::read_to_string(&path).expect("read");
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.serialize_der());
        assert!(text.contains(&secret), "the key is stored");
        let shown = format!("{:?}", stored_accounts(&store).expect("listed"));
        assert!(!shown.contains(&secret), "a summary never holds the key");
    }
}
