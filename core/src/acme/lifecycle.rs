//! The rest of a certificate's and an account's life: renewal information,
//! revocation, deactivation and key rollover.
//!
//! Why this module exists: these calls are made by `certsmith revoke`,
//! `account` and the renewal logic, not by the order engine, and they work
//! on the stored account without placing an order. ACME Renewal Information
//! ([RFC 9773](https://www.rfc-editor.org/rfc/rfc9773)) is an unsigned GET;
//! revocation with the account key and key rollover go through
//! instant-acme; revocation with the certificate's own key and
//! deactivation are signed here (see the `jws` module).

use std::time::SystemTime;

use instant_acme as ia;
use serde::Deserialize;

use super::AcmeClient;
use super::jws::{JwsKey, KeyRef};
use super::stored::{AccountSummary, FoundAccount};
use super::transport::{is_unsettled, problem_error, retry_after_of, retry_bad_nonce};
use crate::error::IssueError;
use crate::store::Store;

/// The CA's suggested renewal window for one certificate
/// ([RFC 9773 §4.2](https://www.rfc-editor.org/rfc/rfc9773#section-4.2)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewalInfo {
    /// Window start.
    pub start: time::OffsetDateTime,
    /// Window end.
    pub end: time::OffsetDateTime,
    /// `explanationURL`, if the CA gave one.
    pub explanation_url: Option<String>,
    /// When to ask again (`Retry-After`), if the CA said.
    pub retry_after: Option<SystemTime>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RenewalInfoDoc {
    suggested_window: WindowDoc,
    #[serde(default, rename = "explanationURL")]
    explanation_url: Option<String>,
}

#[derive(Deserialize)]
struct WindowDoc {
    #[serde(with = "time::serde::rfc3339")]
    start: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    end: time::OffsetDateTime,
}

/// Why a certificate is revoked
/// ([RFC 5280 §5.3.1](https://www.rfc-editor.org/rfc/rfc5280#section-5.3.1));
/// the reasons a subscriber may give.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RevocationReason {
    /// No reason given (code 0).
    Unspecified,
    /// The private key was exposed (code 1).
    KeyCompromise,
    /// The subscriber's affiliation changed (code 3).
    AffiliationChanged,
    /// A newer certificate replaces it (code 4).
    Superseded,
    /// The names are no longer in use (code 5).
    CessationOfOperation,
}

impl RevocationReason {
    /// Every reason, as documented.
    pub const ALL: [RevocationReason; 5] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::AffiliationChanged,
    ];

    /// The CRL reason code.
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
        }
    }

    /// The name on the command line and in `lineage.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "key-compromise",
            RevocationReason::AffiliationChanged => "affiliation-changed",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessation-of-operation",
        }
    }

    fn to_ia(self) -> ia::RevocationReason {
        match self {
            RevocationReason::Unspecified => ia::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => ia::RevocationReason::KeyCompromise,
            RevocationReason::AffiliationChanged => ia::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => ia::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => ia::RevocationReason::CessationOfOperation,
        }
    }
}

impl AcmeClient {
    /// Whether the CA offers renewal information
    /// ([RFC 9773](https://www.rfc-editor.org/rfc/rfc9773)).
    pub async fn offers_renewal_info(&self) -> Result<bool, IssueError> {
        Ok(self.directory_doc().await?.renewal_info.is_some())
    }

    /// Fetches the suggested renewal window of the certificate `cert_id`
    /// (`base64url(AKI keyIdentifier).base64url(serial)`,
    /// [RFC 9773 §4.1](https://www.rfc-editor.org/rfc/rfc9773#section-4.1)).
    /// `None` when the CA's directory has no `renewalInfo`. An unsigned GET.
    pub async fn renewal_info(&self, cert_id: &str) -> Result<Option<RenewalInfo>, IssueError> {
        let Some(base) = self.directory_doc().await?.renewal_info else {
            return Ok(None);
        };
        let url = format!("{}/{cert_id}", base.trim_end_matches('/'));
        let action = "fetch the renewal information";
        let rsp = self
            .send(
                http::Method::GET,
                &url,
                http::HeaderMap::new(),
                bytes::Bytes::new(),
            )
            .await
            .map_err(|e| IssueError::network(action, &url, e))?;
        let status = rsp.status;
        let retry_after = retry_after_of(&rsp.headers);
        let body = rsp.body;
        if !status.is_success() {
            return Err(problem_error(
                action,
                status.as_u16(),
                &body,
                retry_after,
                &url,
            ));
        }
        let doc: RenewalInfoDoc =
            serde_json::from_slice(&body).map_err(|e| IssueError::Network {
                action: action.to_owned(),
                server: url.clone(),
                message: format!("the answer is not RFC 9773 renewal information: {e}"),
                source: Some(Box::new(e)),
            })?;
        if doc.suggested_window.end < doc.suggested_window.start {
            return Err(IssueError::bad_answer(
                action,
                url,
                "the suggested window ends before it starts",
            ));
        }
        Ok(Some(RenewalInfo {
            start: doc.suggested_window.start,
            end: doc.suggested_window.end,
            explanation_url: doc.explanation_url,
            retry_after,
        }))
    }

    /// Revokes `cert_der` signed with the key of this CA's stored account
    /// ([RFC 8555 §7.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.6)).
    pub async fn revoke(
        &self,
        store: &Store,
        cert_der: &[u8],
        reason: RevocationReason,
    ) -> Result<(), IssueError> {
        let found = self.stored_account(store)?;
        found.stored.ensure_active(&found.path)?;
        let account = self
            .ia_account(found.stored.credentials(&found.path)?)
            .await?;
        let der = rustls::pki_types::CertificateDer::from(cert_der.to_vec());
        let request = ia::RevocationRequest {
            certificate: &der,
            reason: Some(reason.to_ia()),
        };
        // A revocation whose answer was lost is sent again; the CA's
        // `alreadyRevoked` then means the first one was done.
        let mut lost = 0u32;
        loop {
            match retry_bad_nonce!(account.revoke(&request).await) {
                Err(e) if is_unsettled(&e) && lost < 2 => {
                    lost += 1;
                    log::warn!("the answer to the revocation was lost; sending it again");
                }
                Err(ia::Error::Api(p))
                    if lost > 0
                        && p.r#type.as_deref()
                            == Some("urn:ietf:params:acme:error:alreadyRevoked") =>
                {
                    return Ok(());
                }
                other => return other.map_err(|e| self.map_error(e, "revoke the certificate")),
            }
        }
    }

    /// Revokes `cert_der` with a request signed by the certificate's own
    /// private key (`key_pem`), carried as a JWK: no account needed
    /// ([RFC 8555 §7.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.6)).
    pub async fn revoke_with_key(
        &self,
        cert_der: &[u8],
        key_pem: &str,
        reason: RevocationReason,
    ) -> Result<(), IssueError> {
        use base64::Engine as _;
        let key = JwsKey::from_pem(key_pem)
            .map_err(|e| IssueError::InvalidRequest(format!("cannot use the key file: {e}")))?;
        let doc = self.directory_doc().await?;
        let Some(url) = doc.revoke_cert.clone() else {
            return Err(IssueError::InvalidRequest(format!(
                "the CA {} offers no revokeCert endpoint",
                self.directory_url
            )));
        };
        let payload = serde_json::json!({
            "certificate": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cert_der),
            "reason": reason.code(),
        });
        self.post_jws(
            &doc,
            &url,
            (&key, KeyRef::Jwk),
            Some(&payload),
            "revoke the certificate",
            Some("alreadyRevoked"),
        )
        .await
        .map(|_| ())
    }

    /// Deactivates this CA's stored account at the CA and marks it
    /// deactivated in the store
    /// ([RFC 8555 §7.3.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.6)).
    /// Irreversible.
    pub async fn deactivate_account(&self, store: &Store) -> Result<AccountSummary, IssueError> {
        let action = "deactivate the account";
        let FoundAccount {
            mut stored,
            key: store_key,
            path,
        } = self.stored_account(store)?;
        stored.ensure_active(&path)?;
        let key = stored.key(&path)?;
        let doc = self.directory_doc().await?;
        let url = stored.account_url.clone();
        let body = self
            .post_jws(
                &doc,
                &url,
                (&key, KeyRef::Kid(&url)),
                Some(&serde_json::json!({"status": "deactivated"})),
                action,
                None,
            )
            .await?;
        let status = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_owned));
        if status.as_deref() != Some("deactivated") {
            return Err(IssueError::bad_answer(
                action,
                url,
                format!(
                    "the CA answered status {:?}, not \"deactivated\"",
                    status.unwrap_or_default()
                ),
            ));
        }
        stored.deactivated();
        self.rewrite_account(store, &store_key, &stored).await?;
        stored.summary(path, true)
    }

    /// Replaces the key of this CA's stored account with a new one at the CA
    /// ([RFC 8555 §7.3.5](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.5))
    /// and stores it. The account URL stays the same.
    pub async fn rollover_account(&self, store: &Store) -> Result<AccountSummary, IssueError> {
        let FoundAccount {
            mut stored,
            key: store_key,
            path,
        } = self.stored_account(store)?;
        stored.ensure_active(&path)?;
        if self.directory_doc().await?.key_change.is_none() {
            return Err(IssueError::InvalidRequest(format!(
                "the CA {} offers no keyChange endpoint: it does not support key rollover",
                self.directory_url
            )));
        }
        let mut account = self.ia_account(stored.credentials(&path)?).await?;
        let new_creds = retry_bad_nonce!(account.update_key().await)
            .map_err(|e| self.map_error(e, "change the account key"))?;
        stored.key_changed(&new_creds)?;
        self.rewrite_account(store, &store_key, &stored).await?;
        stored.summary(path, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_reasons_have_their_crl_codes() {
        let codes: Vec<(&str, u8)> = RevocationReason::ALL
            .iter()
            .map(|r| (r.as_str(), r.code()))
            .collect();
        assert_eq!(
            codes,
            [
                ("unspecified", 0),
                ("key-compromise", 1),
                ("superseded", 4),
                ("cessation-of-operation", 5),
                ("affiliation-changed", 3),
            ]
        );
    }
}
