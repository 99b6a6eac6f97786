//! Private keys at rest in a shared store: AES-256-GCM (aws-lc-rs) under
//! the store key (`CERTSMITH_STORE_KEY` or `CERTSMITH_STORE_KEY_FILE`).
//!
//! Why this module exists: a database is read by more people and tools
//! than a 0600 file (backups, replicas, administrators), so whatever holds
//! a private key (an account document, a certificate's key, a pending
//! order) is sealed before it leaves the process. Each sealed value names
//! the key that sealed it (a short digest, never the key), and is bound to
//! the row it belongs to (associated data), so a value copied into another
//! row does not open.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;

use crate::envfile;
use crate::store::StoreError;

/// The variable holding the store key (base64 of 32 bytes, or 64 hex digits).
pub const STORE_KEY_VAR: &str = "CERTSMITH_STORE_KEY";

/// Marks a sealed value, format 1: `CS1 | key id (8) | nonce (12) | sealed`.
const MAGIC: &[u8; 3] = b"CS1";
const KEY_ID_LEN: usize = 8;

/// The 32-byte key that seals private keys in a shared store. Its `Debug`
/// shows only its id.
#[derive(Clone)]
pub struct StoreKey {
    bytes: [u8; 32],
    id: [u8; KEY_ID_LEN],
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({})", self.id_hex())
    }
}

impl StoreKey {
    /// Parses a key: base64 (standard or URL-safe, padded or not) of 32
    /// bytes, or 64 hexadecimal digits. `source` names where it came from,
    /// for the error.
    pub fn parse(text: &str, source: &str) -> Result<StoreKey, StoreError> {
        let text = text.trim();
        let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()
        } else {
            let trimmed = text.trim_end_matches('=');
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(trimmed)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
                .ok()
        };
        let bytes: [u8; 32] = decoded
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| StoreError::StoreKey {
                reason: format!(
                    "{source} is not a 32-byte key: give 32 random bytes in base64 (make one with `openssl rand -base64 32`) or as 64 hex digits"
                ),
            })?;
        Ok(StoreKey::from_bytes(bytes))
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> StoreKey {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
        StoreKey { bytes, id }
    }

    /// The key from `CERTSMITH_STORE_KEY`, else the file named by
    /// `CERTSMITH_STORE_KEY_FILE` (of `env`, with the same `_FILE` rule as
    /// every secret); `Ok(None)` when neither is set.
    pub fn from_env(
        name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<StoreKey>, StoreError> {
        match envfile::var_or_file(name, env) {
            Ok(Some((var, value))) => StoreKey::parse(&value, &var).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(StoreError::StoreKey {
                reason: e.to_string(),
            }),
        }
    }

    /// The key's id: the first 8 bytes of its SHA-256, in hex. Safe to show.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    fn aead(&self) -> Result<LessSafeKey, StoreError> {
        UnboundKey::new(&AES_256_GCM, &self.bytes)
            .map(LessSafeKey::new)
            .map_err(|_| StoreError::StoreKey {
                reason: "AES-256-GCM refused the key".to_owned(),
            })
    }

    /// Seals `plain` for the row `row` (the associated data).
    pub fn seal(&self, plain: &[u8], row: &str) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| StoreError::StoreKey {
            reason: "no random numbers for a nonce".to_owned(),
        })?;
        let mut data = plain.to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(row.as_bytes()),
                &mut data,
            )
            .map_err(|_| StoreError::StoreKey {
                reason: "sealing failed".to_owned(),
            })?;
        let mut out = Vec::with_capacity(MAGIC.len() + KEY_ID_LEN + NONCE_LEN + data.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// Opens a value sealed for the row `row`.
    pub fn open(&self, sealed: &[u8], row: &str) -> Result<Vec<u8>, StoreError> {
        let header = MAGIC.len() + KEY_ID_LEN + NONCE_LEN;
        if sealed.len() < header || &sealed[..MAGIC.len()] != MAGIC {
            return Err(StoreError::StoreKey {
                reason: format!("{row} is not a sealed value (damaged?)"),
            });
        }
        let id = &sealed[MAGIC.len()..MAGIC.len() + KEY_ID_LEN];
        if id != self.id {
            return Err(StoreError::WrongStoreKey {
                given: self.id_hex(),
                sealed_with: hex(id),
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[MAGIC.len() + KEY_ID_LEN..header]);
        let mut data = sealed[header..].to_vec();
        let plain = self
            .aead()?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(row.as_bytes()),
                &mut data,
            )
            .map_err(|_| StoreError::StoreKey {
                reason: format!(
                    "{row} does not open with key {} (damaged, or moved from another row)",
                    self.id_hex()
                ),
            })?;
        Ok(plain.to_vec())
    }
}

/// The id of the key that sealed `sealed`, if it is a sealed value.
pub fn sealed_key_id(sealed: &[u8]) -> Option<String> {
    (sealed.len() >= MAGIC.len() + KEY_ID_LEN && &sealed[..MAGIC.len()] == MAGIC)
        .then(|| hex(&sealed[MAGIC.len()..MAGIC.len() + KEY_ID_LEN]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> StoreKey {
        StoreKey::from_bytes([b; 32])
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_row() {
        let k = key(7);
        let sealed = k
            .seal(b"-----BEGIN PRIVATE KEY-----", "version:a:1")
            .expect("seal");
        assert!(
            !sealed.windows(7).any(|w| w == b"PRIVATE"),
            "plaintext leaked"
        );
        assert_eq!(
            k.open(&sealed, "version:a:1").expect("open"),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(matches!(
            k.open(&sealed, "version:b:1"),
            Err(StoreError::StoreKey { .. })
        ));
        assert!(matches!(
            key(8).open(&sealed, "version:a:1"),
            Err(StoreError::WrongStoreKey { .. })
        ));
        assert_eq!(sealed_key_id(&sealed), Some(k.id_hex()));
        // Two seals of the same value differ (fresh nonces).
        assert_ne!(
            sealed,
            k.seal(b"-----BEGIN PRIVATE KEY-----", "version:a:1")
                .expect("seal")
        );
    }

    #[test]
    fn keys_parse_from_base64_or_hex_and_never_show() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        let a = StoreKey::parse(&b64, "CERTSMITH_STORE_KEY").expect("base64");
        let b = StoreKey::parse(&"01".repeat(32), "CERTSMITH_STORE_KEY").expect("hex");
        assert_eq!(a.id_hex(), b.id_hex());
        assert!(!format!("{a:?}").contains(&b64));
        let short = StoreKey::parse("c2hvcnQ=", "CERTSMITH_STORE_KEY").expect_err("short");
        let msg = short.to_string();
        assert!(
            msg.contains("CERTSMITH_STORE_KEY") && msg.contains("openssl rand -base64 32"),
            "{msg}"
        );
    }
}
