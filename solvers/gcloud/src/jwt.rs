//! The service-account key and the OAuth 2.0 JWT-bearer grant
//! (RFC 7523) that turns it into an access token: a JWT signed with the
//! key (RS256, through aws-lc-rs, certsmith's one crypto provider),
//! posted to the key's `token_uri`.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use certsmith_plugin_api::PluginError;
use serde::Deserialize;
use serde_json::json;

/// The scope Cloud DNS changes need.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/ndev.clouddns.readwrite";
/// Google's token endpoint, when the key names none.
pub(crate) const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The assertion's lifetime (Google's maximum).
const ASSERTION_LIFETIME_S: u64 = 3600;

/// The fields of a service-account key file this solver uses.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    ty: String,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    private_key_id: Option<String>,
    private_key: String,
    client_email: String,
    #[serde(default)]
    token_uri: Option<String>,
}

/// A parsed service-account key.
pub(crate) struct ServiceAccount {
    pub(crate) project_id: Option<String>,
    pub(crate) client_email: String,
    pub(crate) token_uri: String,
    key_id: Option<String>,
    key: RsaKeyPair,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

const FIX: &str = "set GCE_SERVICE_ACCOUNT_FILE to the path of the service account's JSON key (IAM → Service accounts → Keys → Add key → JSON), or GCE_SERVICE_ACCOUNT to its content";

impl ServiceAccount {
    /// Parses the key file's JSON.
    pub(crate) fn parse(json: &str) -> Result<Self, PluginError> {
        let file: KeyFile = serde_json::from_str(json.trim()).map_err(|e| {
            // serde's message names the field, never the key's content.
            PluginError::config(format!(
                "the service account key is not a Google service-account JSON key ({e}): {FIX}"
            ))
        })?;
        if !file.ty.is_empty() && file.ty != "service_account" {
            return Err(PluginError::config(format!(
                "the key is of type {:?}, not \"service_account\": {FIX}",
                file.ty
            )));
        }
        let der = pem_body(&file.private_key).ok_or_else(|| {
            PluginError::config(format!(
                "the key's private_key is not a PEM \"PRIVATE KEY\": {FIX}"
            ))
        })?;
        let key = RsaKeyPair::from_pkcs8(&der).map_err(|_| {
            PluginError::config(format!(
                "the key's private_key is not an RSA key in PKCS#8: {FIX}"
            ))
        })?;
        Ok(ServiceAccount {
            project_id: file.project_id.filter(|p| !p.trim().is_empty()),
            client_email: file.client_email,
            token_uri: file
                .token_uri
                .filter(|u| !u.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned()),
            key_id: file.private_key_id,
            key,
        })
    }

    /// The signed assertion for `audience` (the token endpoint).
    pub(crate) fn assertion(&self, audience: &str) -> Result<String, PluginError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut header = json!({ "alg": "RS256", "typ": "JWT" });
        if let Some(kid) = &self.key_id {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": audience,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_S,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| {
                PluginError::internal(
                    "signing the token request with the service account key failed",
                )
            })?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

/// The DER inside a PEM `PRIVATE KEY` block.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let begin = "-----BEGIN PRIVATE KEY-----";
    let end = "-----END PRIVATE KEY-----";
    let start = pem.find(begin)? + begin.len();
    let stop = pem[start..].find(end)? + start;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_are_not_keys_are_refused_without_echoing_them() {
        let e = ServiceAccount::parse("not json").expect_err("refused");
        assert!(
            e.message.contains("GCE_SERVICE_ACCOUNT_FILE"),
            "{}",
            e.message
        );
        let e = ServiceAccount::parse(
            r#"{"type":"service_account","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n","client_email":"a@b"}"#,
        )
        .expect_err("refused");
        assert!(e.message.contains("not an RSA key"), "{}", e.message);
        let e = ServiceAccount::parse(
            r#"{"type":"authorized_user","private_key":"x","client_email":"a"}"#,
        )
        .expect_err("refused");
        assert!(e.message.contains("authorized_user"), "{}", e.message);
    }

    #[test]
    fn pem_bodies_are_decoded() {
        assert_eq!(
            pem_body("-----BEGIN PRIVATE KEY-----\nAQID\n-----END PRIVATE KEY-----\n"),
            Some(vec![1, 2, 3])
        );
        assert_eq!(pem_body("AQID"), None);
    }
}
