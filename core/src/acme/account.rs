//! ACME accounts ([RFC 8555 §7.3](https://www.rfc-editor.org/rfc/rfc8555#section-7.3)):
//! finding or creating the account an order is placed with.
//!
//! Why this module exists: every command starts by getting an account, and
//! the rules for it (terms of service, external account binding, contact
//! syntax, a stored account reused rather than created again) are the same
//! for all of them. The stored form is in the `stored` module.

use std::fmt;
use std::sync::Arc;

use instant_acme as ia;

use super::AcmeClient;
use super::jws::JwsKey;
use super::stored::{FoundAccount, StoredAccount};
use super::transport::retry_bad_nonce;
use crate::error::IssueError;
use crate::store::Store;

/// External account binding credentials
/// ([RFC 8555 §7.3.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.4)).
/// `Debug` never shows the key.
#[derive(Clone)]
pub struct Eab {
    kid: String,
    hmac_key: Vec<u8>,
}

impl fmt::Debug for Eab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .field("hmac_key", &"[redacted]")
            .finish()
    }
}

impl Eab {
    /// Builds EAB credentials from the key id and the base64url HMAC key the
    /// CA gave (padding and the standard alphabet are accepted too).
    pub fn new(kid: &str, hmac_key_b64: &str) -> Result<Eab, IssueError> {
        use base64::Engine as _;
        if kid.trim().is_empty() {
            return Err(IssueError::Eab("the key id is empty".to_owned()));
        }
        let trimmed = hmac_key_b64.trim().trim_end_matches('=');
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
            .map_err(|_| IssueError::Eab("the HMAC key is not base64url".to_owned()))?;
        if key.is_empty() {
            return Err(IssueError::Eab("the HMAC key is empty".to_owned()));
        }
        Ok(Eab {
            kid: kid.trim().to_owned(),
            hmac_key: key,
        })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// How to find or create the account.
#[derive(Clone, Debug, Default)]
pub struct AccountOptions {
    /// Contact e-mail address (without `mailto:`).
    pub email: Option<String>,
    /// Whether the operator agreed to the CA's terms of service.
    pub agree_tos: bool,
    /// External account binding, if the CA needs it.
    pub eab: Option<Eab>,
    /// Whether `email` is the operator's current choice (given now, on the
    /// command line, in the environment or the config file): the stored
    /// account's contact is then changed to it at the CA when it differs.
    /// False when `email` was recorded with a certificate: a renewal never
    /// changes the contact. An `email` of `None` never changes it.
    pub set_contact: bool,
}

impl AccountOptions {
    /// The contact URLs ([RFC 8555 §7.3](https://www.rfc-editor.org/rfc/rfc8555#section-7.3)).
    pub fn contact(&self) -> Result<Vec<String>, IssueError> {
        let Some(email) = &self.email else {
            return Ok(Vec::new());
        };
        let email = email.trim().trim_start_matches("mailto:");
        let valid = email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        }) && !email
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, ',' | '<' | '>' | '?'));
        if !valid {
            return Err(IssueError::InvalidRequest(format!(
                "invalid contact e-mail '{email}': give one address like admin@example.com"
            )));
        }
        Ok(vec![format!("mailto:{email}")])
    }
}

/// An ACME account, ready to place orders. Cheap to clone.
#[derive(Clone)]
pub struct Account {
    pub(super) inner: ia::Account,
    url: String,
    pub(super) client: AcmeClient,
    contact_changed: Option<Vec<String>>,
    /// The account key, for the requests certsmith signs itself
    /// (alternate chains); `None` if it did not parse, which only
    /// disables those.
    pub(super) key: Option<Arc<JwsKey>>,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Account {
    fn new(inner: ia::Account, client: &AcmeClient, key_der: &[u8]) -> Account {
        let key = match JwsKey::from_der(key_der) {
            Ok(k) => Some(Arc::new(k)),
            Err(e) => {
                log::warn!("the account key cannot sign certsmith's own requests: {e}");
                None
            }
        };
        Account {
            url: inner.id().to_owned(),
            inner,
            client: client.clone(),
            contact_changed: None,
            key,
        }
    }

    /// The account URL at the CA.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The contact it was given when loaded, if
    /// [`AcmeClient::account`] changed it.
    pub fn contact_changed(&self) -> Option<&[String]> {
        self.contact_changed.as_deref()
    }
}

/// How long a first run waits for another one creating the same account.
const ACCOUNT_LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

impl AcmeClient {
    /// instant-acme's account for stored credentials (fetches nothing but
    /// the directory, which is cached).
    pub(super) async fn ia_account(
        &self,
        creds: ia::AccountCredentials,
    ) -> Result<ia::Account, IssueError> {
        ia::Account::builder_with_http(self.shim())
            .from_credentials(creds)
            .await
            .map_err(|e| self.map_error(e, "load the account"))
    }

    /// Loads the account of this CA directory from `store` (one per
    /// directory, whatever its contact: see the `stored` module), or creates
    /// it at the CA and stores it. Returns whether it was created. With
    /// [`AccountOptions::set_contact`], a stored account whose contact
    /// differs from `opts`' has it changed at the CA
    /// ([RFC 8555 §7.3.2](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.2))
    /// and in the store. Fetches the directory first (see
    /// [`AcmeClient::directory`]).
    pub async fn account(
        &self,
        store: &Store,
        opts: &AccountOptions,
    ) -> Result<(Account, bool), IssueError> {
        let dir = self.directory().await?;
        opts.contact()?;
        if let Some(found) = self.find_stored(store)? {
            return self.use_stored(store, found, opts).await;
        }
        // None yet: create it under the store's account lease, so that
        // concurrent first runs create one account at the CA; the others
        // wait, then find it stored.
        let s = store.clone();
        let _lease = tokio::task::spawn_blocking(move || s.lease("account", ACCOUNT_LEASE_WAIT))
            .await
            .map_err(|e| IssueError::Internal(format!("the account lease task failed: {e}")))??;
        if let Some(found) = self.find_stored(store)? {
            return self.use_stored(store, found, opts).await;
        }
        self.new_account(store, &dir, opts, false).await
    }

    /// An account loaded from the store, checked to be active, its contact
    /// brought up to date as `opts` asks.
    async fn use_stored(
        &self,
        store: &Store,
        found: FoundAccount,
        opts: &AccountOptions,
    ) -> Result<(Account, bool), IssueError> {
        found.stored.ensure_active(&found.path)?;
        let creds = found.stored.credentials(&found.path)?;
        let key_der = creds.private_key().secret_pkcs8_der().to_vec();
        let inner = self.ia_account(creds).await?;
        let changed = if opts.set_contact {
            self.update_contact(store, &inner, found, opts).await?
        } else {
            None
        };
        let mut account = Account::new(inner, self, &key_der);
        account.contact_changed = changed;
        Ok((account, false))
    }

    /// Changes the account's contact to `opts`' at the CA, then in the
    /// store, when `opts` has one and it differs; returns the new one
    /// then.
    async fn update_contact(
        &self,
        store: &Store,
        inner: &ia::Account,
        mut found: FoundAccount,
        opts: &AccountOptions,
    ) -> Result<Option<Vec<String>>, IssueError> {
        let contact = opts.contact()?;
        if contact.is_empty() || contact == found.stored.contact() {
            return Ok(None);
        }
        let refs: Vec<&str> = contact.iter().map(String::as_str).collect();
        retry_bad_nonce!(inner.update_contacts(&refs).await)
            .map_err(|e| self.map_error(e, "update the account's contact"))?;
        found.stored.set_contact(contact.clone());
        self.rewrite_account(store, &found.key, &found.stored)
            .await?;
        Ok(Some(contact))
    }

    /// Creates a new account at the CA
    /// ([RFC 8555 §7.3](https://www.rfc-editor.org/rfc/rfc8555#section-7.3))
    /// and stores it as the account of this directory, replacing the one
    /// stored under the directory's id, if any.
    pub async fn create_account(
        &self,
        store: &Store,
        dir: &super::DirectoryInfo,
        opts: &AccountOptions,
    ) -> Result<Account, IssueError> {
        self.new_account(store, dir, opts, true)
            .await
            .map(|(account, _)| account)
    }

    /// Creates an account at the CA and stores it. With `replace` false,
    /// an account another process stored meanwhile for this directory wins and is returned instead (with `false`: not created),
    /// so that concurrent first runs end up with one account.
    async fn new_account(
        &self,
        store: &Store,
        dir: &super::DirectoryInfo,
        opts: &AccountOptions,
        replace: bool,
    ) -> Result<(Account, bool), IssueError> {
        if let Some(url) = &dir.terms_of_service
            && !opts.agree_tos
        {
            return Err(IssueError::TermsNotAgreed { url: url.clone() });
        }
        if dir.external_account_required && opts.eab.is_none() {
            return Err(IssueError::EabRequired {
                server: self.directory_url.clone(),
            });
        }
        let contact = opts.contact()?;
        let contact_refs: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new = ia::NewAccount {
            contact: &contact_refs,
            terms_of_service_agreed: opts.agree_tos,
            only_return_existing: false,
        };
        let eab = opts
            .eab
            .as_ref()
            .map(|e| ia::ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
        let (inner, creds) = retry_bad_nonce!(
            ia::Account::builder_with_http(self.shim())
                .create(&new, self.directory_url.clone(), eab.as_ref())
                .await
        )
        .map_err(|e| self.map_error(e, "create the account"))?;
        let stored = StoredAccount::new(
            self.directory_url.clone(),
            contact,
            inner.id().to_owned(),
            &creds,
        )?;
        if replace {
            self.rewrite_account(store, &self.new_account_key(), &stored)
                .await?;
        } else if let Some(theirs) = self.store_new_account(store, &stored).await? {
            log::info!(
                "another certsmith process stored an account for this CA first; using it ({})",
                theirs.path.display()
            );
            return self.use_stored(store, theirs, opts).await;
        }
        Ok((
            Account::new(inner, self, creds.private_key().secret_pkcs8_der()),
            true,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eab_key_never_in_debug() {
        let e = Eab::new("kid-1", "c2VjcmV0LWhtYWMta2V5").expect("valid");
        let dbg = format!("{e:?}");
        assert!(dbg.contains("kid-1") && dbg.contains("[redacted]"), "{dbg}");
        assert!(
            !dbg.contains("c2VjcmV0") && !dbg.contains("secret"),
            "{dbg}"
        );
        let err = Eab::new("kid", "not base64 !!").expect_err("bad key");
        assert!(!err.to_string().contains("!!"), "{err}");
    }

    #[test]
    fn contact_validation() {
        let o = AccountOptions {
            email: Some("admin@example.com".into()),
            ..Default::default()
        };
        assert_eq!(o.contact().expect("ok"), ["mailto:admin@example.com"]);
        let o = AccountOptions {
            email: Some("not an email".into()),
            ..Default::default()
        };
        assert!(o.contact().is_err());
        assert!(AccountOptions::default().contact().expect("ok").is_empty());
    }
}
