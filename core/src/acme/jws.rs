//! Requests certsmith signs itself, for the calls instant-acme lacks.
//!
//! Why this module exists: instant-acme 0.8 signs only with an account it
//! holds, so two calls are done here with a small JWS signer
//! ([RFC 7515](https://www.rfc-editor.org/rfc/rfc7515), flattened JSON
//! serialization, [RFC 8555 §6.2](https://www.rfc-editor.org/rfc/rfc8555#section-6.2)):
//! revocation signed with the certificate's own key
//! ([RFC 8555 §7.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.6),
//! for a lost account) and account deactivation
//! ([RFC 8555 §7.3.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.6)),
//! whose answer instant-acme does not check. The same key type also
//! describes a stored account key (type and thumbprint) without the CA.
//! Everything instant-acme does offer (orders, revocation with the account
//! key, key rollover) goes through instant-acme.

use bytes::Bytes;

use super::transport::{Answer, NONCE_RETRIES, nonce_of, problem_error, retry_after_of};
use super::{AcmeClient, DirectoryDoc};
use crate::error::IssueError;

/// The RFC 7638 thumbprint of a JWK holding only its required members:
/// SHA-256 of its JSON with members sorted and no whitespace (serde_json
/// objects are sorted maps), base64url.
pub(super) fn jwk_thumbprint(jwk: &serde_json::Value) -> String {
    use base64::Engine as _;
    let canonical = serde_json::to_vec(jwk).unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// How a JWS names its key
/// ([RFC 8555 §6.2](https://www.rfc-editor.org/rfc/rfc8555#section-6.2)):
/// the account URL, or the key itself.
#[derive(Clone, Copy)]
pub(super) enum KeyRef<'a> {
    /// `kid`: the account URL.
    Kid(&'a str),
    /// `jwk`: the public key.
    Jwk,
}

/// A private key that signs JWS: ES256, ES384 or RS256. Never `Debug`.
pub(super) enum JwsKey {
    Ec {
        pair: aws_lc_rs::signature::EcdsaKeyPair,
        alg: &'static str,
        crv: &'static str,
    },
    Rsa(aws_lc_rs::signature::RsaKeyPair),
}

impl JwsKey {
    /// From PEM: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or PKCS#1
    /// (`RSA PRIVATE KEY`).
    pub(super) fn from_pem(pem: &str) -> Result<JwsKey, String> {
        for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
            let block = block.map_err(|e| format!("not PEM: {e}"))?;
            if block.label.contains("PRIVATE KEY") {
                return JwsKey::from_der(&block.contents);
            }
        }
        Err("it holds no PEM private key (-----BEGIN PRIVATE KEY-----)".to_owned())
    }

    /// From DER, in the same forms as [`JwsKey::from_pem`].
    pub(super) fn from_der(der: &[u8]) -> Result<JwsKey, String> {
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
            RsaKeyPair,
        };
        if let Ok(pair) = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
        {
            return Ok(JwsKey::Ec {
                pair,
                alg: "ES256",
                crv: "P-256",
            });
        }
        if let Ok(pair) = EcdsaKeyPair::from_private_key_der(&ECDSA_P384_SHA384_FIXED_SIGNING, der)
        {
            return Ok(JwsKey::Ec {
                pair,
                alg: "ES384",
                crv: "P-384",
            });
        }
        if let Ok(pair) = RsaKeyPair::from_pkcs8(der).or_else(|_| RsaKeyPair::from_der(der)) {
            return Ok(JwsKey::Rsa(pair));
        }
        Err("not an ECDSA P-256/P-384 or RSA private key".to_owned())
    }

    /// The key type as `--key-type` names it, e.g. `ec-p256`.
    pub(super) fn key_type(&self) -> &'static str {
        match self {
            JwsKey::Ec { crv: "P-384", .. } => "ec-p384",
            JwsKey::Ec { .. } => "ec-p256",
            JwsKey::Rsa(p) => match p.public_modulus_len() * 8 {
                2048 => "rsa2048",
                3072 => "rsa3072",
                4096 => "rsa4096",
                _ => "rsa",
            },
        }
    }

    /// The public JWK with its members in lexicographic order, as RFC 7638
    /// hashes it.
    fn jwk(&self) -> serde_json::Value {
        use aws_lc_rs::signature::KeyPair as _;
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        match self {
            JwsKey::Ec { pair, crv, .. } => {
                // Uncompressed point: 0x04 || X || Y.
                let point = pair.public_key().as_ref();
                let n = (point.len().saturating_sub(1)) / 2;
                let (x, y) = point.get(1..).unwrap_or_default().split_at(n);
                serde_json::json!({"crv": crv, "kty": "EC", "x": b64(x), "y": b64(y)})
            }
            JwsKey::Rsa(pair) => {
                let c = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                serde_json::json!({"e": b64(&c.e), "kty": "RSA", "n": b64(&c.n)})
            }
        }
    }

    /// The JWK thumbprint ([RFC 7638](https://www.rfc-editor.org/rfc/rfc7638)),
    /// base64url.
    pub(super) fn thumbprint(&self) -> String {
        jwk_thumbprint(&self.jwk())
    }

    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        match self {
            JwsKey::Ec { pair, .. } => pair
                .sign(&rng, data)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "ECDSA signing failed".to_owned()),
            JwsKey::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &rng,
                    data,
                    &mut sig,
                )
                .map_err(|_| "RSA signing failed".to_owned())?;
                Ok(sig)
            }
        }
    }

    /// A flattened JWS ([RFC 8555 §6.2](https://www.rfc-editor.org/rfc/rfc8555#section-6.2));
    /// `payload: None` is POST-as-GET.
    fn jws(
        &self,
        url: &str,
        nonce: &str,
        key_ref: KeyRef<'_>,
        payload: Option<&serde_json::Value>,
    ) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let alg = match self {
            JwsKey::Ec { alg, .. } => *alg,
            JwsKey::Rsa(_) => "RS256",
        };
        let mut header = serde_json::json!({"alg": alg, "nonce": nonce, "url": url});
        match key_ref {
            KeyRef::Kid(kid) => header["kid"] = serde_json::Value::from(kid),
            KeyRef::Jwk => header["jwk"] = self.jwk(),
        }
        let protected = b64(&serde_json::to_vec(&header).map_err(|e| e.to_string())?);
        let payload = match payload {
            Some(p) => b64(&serde_json::to_vec(p).map_err(|e| e.to_string())?),
            None => String::new(),
        };
        let signature = self.sign(format!("{protected}.{payload}").as_bytes())?;
        serde_json::to_vec(&serde_json::json!({
            "protected": protected,
            "payload": payload,
            "signature": b64(&signature),
        }))
        .map_err(|e| e.to_string())
    }
}

impl AcmeClient {
    /// POSTs a JWS signed by `key`, naming it as `key_ref` says; retries on `badNonce`
    /// ([RFC 8555 §6.5](https://www.rfc-editor.org/rfc/rfc8555#section-6.5))
    /// and as the transport allows (docs/design.md §7). When the answer to
    /// the request was lost (it may have taken effect), it is signed and
    /// sent again once more, and a refusal of type `done_if` (e.g.
    /// `alreadyRevoked`) then means the first one was done. Returns the
    /// body of a successful answer.
    pub(super) async fn post_jws(
        &self,
        doc: &DirectoryDoc,
        url: &str,
        (key, key_ref): (&JwsKey, KeyRef<'_>),
        payload: Option<&serde_json::Value>,
        action: &str,
        done_if: Option<&str>,
    ) -> Result<Bytes, IssueError> {
        self.post_jws_answer(doc, url, (key, key_ref), payload, action, done_if)
            .await
            .map(|a| a.body)
    }

    /// [`AcmeClient::post_jws`], returning the whole successful answer
    /// (its headers too: `Link` of a certificate download).
    pub(super) async fn post_jws_answer(
        &self,
        doc: &DirectoryDoc,
        url: &str,
        (key, key_ref): (&JwsKey, KeyRef<'_>),
        payload: Option<&serde_json::Value>,
        action: &str,
        done_if: Option<&str>,
    ) -> Result<Answer, IssueError> {
        let mut nonce = self.fresh_nonce(&doc.new_nonce).await?;
        let mut attempt = 0u32;
        let mut lost = 0u32;
        loop {
            let body = key.jws(url, &nonce, key_ref, payload).map_err(|e| {
                IssueError::Internal(format!("cannot sign the request to {action}: {e}"))
            })?;
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/jose+json"),
            );
            let rsp = match self
                .send(http::Method::POST, url, headers, Bytes::from(body))
                .await
            {
                Ok(rsp) => rsp,
                Err(e) if e.unsettled() && lost < 2 && done_if.is_some() => {
                    lost += 1;
                    log::warn!(
                        "the answer to the request to {action} was lost ({e}); sending it again"
                    );
                    nonce = self.fresh_nonce(&doc.new_nonce).await?;
                    continue;
                }
                Err(e) => return Err(IssueError::network(action, url, e)),
            };
            let status = rsp.status;
            let next_nonce = nonce_of(&rsp.headers);
            let retry_after = retry_after_of(&rsp.headers);
            if status.is_success() {
                return Ok(rsp);
            }
            let body = rsp.body;
            let err = problem_error(action, status.as_u16(), &body, retry_after, url);
            let bad_nonce =
                matches!(&err, IssueError::CaRefused { problem, .. } if problem.is("badNonce"));
            if lost > 0
                && let (Some(done), IssueError::CaRefused { problem, .. }) = (done_if, &err)
                && problem.is(done)
            {
                return Ok(Answer {
                    status,
                    headers: http::HeaderMap::new(),
                    body: Bytes::new(),
                });
            }
            // instant-acme's three attempts plus ours, as for its calls.
            if bad_nonce && attempt < NONCE_RETRIES + 3 {
                attempt += 1;
                nonce = match next_nonce {
                    Some(n) => n,
                    None => self.fresh_nonce(&doc.new_nonce).await?,
                };
                continue;
            }
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwk_thumbprint_matches_rfc7638() {
        // RFC 7638 §3.1.
        let jwk = serde_json::json!({
            "e": "AQAB",
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        });
        assert_eq!(
            jwk_thumbprint(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    /// Every key type certsmith issues can sign a revocation: the JWS
    /// verifies with the public key carried in its own JWK.
    #[test]
    fn jws_signed_with_a_certificate_key_verifies() {
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, KeyPair as _,
            RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
        };
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for kt in [
            crate::keys::KeyType::EcP256,
            crate::keys::KeyType::EcP384,
            crate::keys::KeyType::Rsa2048,
        ] {
            let pem = crate::keys::generate_key(kt).expect("key").serialize_pem();
            let key = JwsKey::from_pem(&pem).expect("usable");
            assert_eq!(key.key_type(), kt.as_str());
            let payload = serde_json::json!({"certificate": "AAEC", "reason": 1});
            let body = key
                .jws("https://ca/revoke", "nonce-1", KeyRef::Jwk, Some(&payload))
                .expect("signs");
            let jws: serde_json::Value = serde_json::from_slice(&body).expect("json");
            let protected = jws["protected"].as_str().expect("protected");
            let header: serde_json::Value =
                serde_json::from_slice(&b64.decode(protected).expect("b64")).expect("json");
            assert_eq!(header["url"], "https://ca/revoke");
            assert_eq!(header["nonce"], "nonce-1");
            assert!(header.get("kid").is_none());
            assert_eq!(header["jwk"], key.jwk());
            let signed = format!("{protected}.{}", jws["payload"].as_str().expect("payload"));
            let sig = b64
                .decode(jws["signature"].as_str().expect("sig"))
                .expect("b64");
            let ok = match &key {
                JwsKey::Ec { pair, crv, .. } => {
                    assert_eq!(
                        header["alg"],
                        if *crv == "P-256" { "ES256" } else { "ES384" }
                    );
                    let alg = if *crv == "P-256" {
                        &ECDSA_P256_SHA256_FIXED
                    } else {
                        &ECDSA_P384_SHA384_FIXED
                    };
                    UnparsedPublicKey::new(alg, pair.public_key().as_ref())
                        .verify(signed.as_bytes(), &sig)
                }
                JwsKey::Rsa(pair) => {
                    assert_eq!(header["alg"], "RS256");
                    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pair.public_key().as_ref())
                        .verify(signed.as_bytes(), &sig)
                }
            };
            assert!(ok.is_ok(), "{kt}: signature does not verify");
            assert_eq!(key.thumbprint().len(), 43);
        }
        // An account-key JWS names the account instead.
        let pem = crate::keys::generate_key(crate::keys::KeyType::EcP256)
            .expect("key")
            .serialize_pem();
        let key = JwsKey::from_pem(&pem).expect("usable");
        let body = key
            .jws(
                "https://ca/acct/1",
                "n",
                KeyRef::Kid("https://ca/acct/1"),
                None,
            )
            .expect("signs");
        let jws: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(jws["payload"], "", "POST-as-GET has an empty payload");
        let header: serde_json::Value = serde_json::from_slice(
            &b64.decode(jws["protected"].as_str().expect("p"))
                .expect("b64"),
        )
        .expect("json");
        assert_eq!(header["kid"], "https://ca/acct/1");
        assert!(header.get("jwk").is_none());
        assert!(
            JwsKey::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
