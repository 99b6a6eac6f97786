//! Certificate private keys and the CSR that asks the CA to certify them.
//!
//! Why this module exists: it is the only place that touches a certificate's
//! private key before it reaches `privkey.pem`. The key lives in a
//! [`PrivateKeyPem`], whose `Debug` prints `[redacted]`, so that no log line,
//! error or panic message can carry it. The CSR
//! ([RFC 2986](https://www.rfc-editor.org/rfc/rfc2986), sent at finalization,
//! [RFC 8555 §7.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.4)) lists
//! the order's identifiers as subjectAltNames; the CA ignores everything else
//! in it.

use std::fmt;
use std::str::FromStr;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData, RsaKeySize};
use serde::{Deserialize, Serialize};

/// A certificate key algorithm and size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256: small, fast, accepted everywhere that matters.
    #[default]
    EcP256,
    /// ECDSA on P-384 with SHA-384.
    EcP384,
    /// RSA 2048-bit, for old clients.
    Rsa2048,
    /// RSA 3072-bit.
    Rsa3072,
    /// RSA 4096-bit (slow to generate: about a second).
    Rsa4096,
}

impl KeyType {
    /// Every key type, in the order they are documented.
    pub const ALL: [KeyType; 5] = [
        KeyType::EcP256,
        KeyType::EcP384,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];

    /// The name used on the command line and in `lineage.toml`, e.g. `ec-p256`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::EcP384 => "ec-p384",
            KeyType::Rsa2048 => "rsa2048",
            KeyType::Rsa3072 => "rsa3072",
            KeyType::Rsa4096 => "rsa4096",
        }
    }

    /// Whether generating this key takes long enough to belong on a blocking
    /// thread.
    pub fn is_slow(self) -> bool {
        matches!(self, KeyType::Rsa3072 | KeyType::Rsa4096)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyType::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| KeyError::UnknownKeyType(s.to_owned()))
    }
}

/// A PEM-encoded PKCS#8 private key. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKeyPem(String);

impl PrivateKeyPem {
    /// Wraps a PEM string.
    pub fn new(pem: String) -> Self {
        PrivateKeyPem(pem)
    }

    /// The PEM text, for writing to `privkey.pem` and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A fresh key and a CSR for it, or the user's CSR alone.
#[derive(Debug)]
pub struct KeyAndCsr {
    /// The key type.
    pub key_type: KeyType,
    /// The private key; `None` for the user's CSR (the key is theirs).
    pub private_key: Option<PrivateKeyPem>,
    /// The DER-encoded CSR.
    pub csr_der: Vec<u8>,
}

/// A certificate signing request the user brought (`--csr`, `csr = ...`):
/// the key stays with them, certsmith only sends the CSR. Read with
/// [`read_csr`].
#[derive(Clone, PartialEq, Eq)]
pub struct UserCsr {
    /// The CSR, DER.
    pub der: Vec<u8>,
    /// The names it asks for: its subjectAltNames (DNS names and IP
    /// addresses), or, when it has none, its subject's common name.
    pub names: Vec<String>,
    /// The type of the key it certifies.
    pub key_type: KeyType,
}

impl fmt::Debug for UserCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserCsr")
            .field("names", &self.names)
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

impl UserCsr {
    /// The CSR as PEM (`CERTIFICATE REQUEST`), as stored.
    pub fn to_pem(&self) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.der);
        let mut out = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE REQUEST-----\n");
        out
    }

    /// The raw public key bits it certifies (its SubjectPublicKeyInfo's
    /// BIT STRING), to compare with a certificate's.
    pub fn public_key(&self) -> Result<Vec<u8>, KeyError> {
        use x509_parser::prelude::FromDer;
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&self.der)
                .map_err(|e| KeyError::BadCsr(format!("it does not parse as DER: {e}")))?;
        Ok(csr
            .certification_request_info
            .subject_pki
            .subject_public_key
            .data
            .to_vec())
    }
}

/// Reads a CSR ([RFC 2986](https://www.rfc-editor.org/rfc/rfc2986)) in PEM
/// (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`) or DER: its
/// names and key type. The signature is the CA's to check.
pub fn read_csr(bytes: &[u8]) -> Result<UserCsr, KeyError> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;
    let der = if bytes.starts_with(b"-----") || bytes.trim_ascii_start().starts_with(b"-----") {
        let block = x509_parser::pem::Pem::iter_from_buffer(bytes)
            .filter_map(Result::ok)
            .find(|p| p.label.ends_with("CERTIFICATE REQUEST"))
            .ok_or_else(|| {
                KeyError::BadCsr(
                    "it holds no PEM block -----BEGIN CERTIFICATE REQUEST-----".to_owned(),
                )
            })?;
        block.contents
    } else {
        bytes.to_vec()
    };
    let (_, csr) = X509CertificationRequest::from_der(&der).map_err(|e| {
        KeyError::BadCsr(format!(
            "it is neither a PEM nor a DER certificate request ({e})"
        ))
    })?;
    let mut names = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => names.push((*d).to_owned()),
                    GeneralName::IPAddress(b) => match <[u8; 4]>::try_from(*b) {
                        Ok(v4) => names.push(std::net::Ipv4Addr::from(v4).to_string()),
                        Err(_) => match <[u8; 16]>::try_from(*b) {
                            Ok(v6) => names.push(std::net::Ipv6Addr::from(v6).to_string()),
                            Err(_) => {
                                return Err(KeyError::BadCsr(
                                    "an IP address subjectAltName is neither 4 nor 16 bytes"
                                        .to_owned(),
                                ));
                            }
                        },
                    },
                    other => {
                        return Err(KeyError::BadCsr(format!(
                            "it asks for a subjectAltName an ACME CA cannot validate ({other}); only DNS names and IP addresses"
                        )));
                    }
                }
            }
        }
    }
    if names.is_empty()
        && let Some(cn) = csr
            .certification_request_info
            .subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
    {
        names.push(cn.to_owned());
    }
    if names.is_empty() {
        return Err(KeyError::BadCsr(
            "it names no domain: no subjectAltName and no common name".to_owned(),
        ));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let key_type = csr_key_type(spki)?;
    Ok(UserCsr {
        der,
        names,
        key_type,
    })
}

/// The key type of a SubjectPublicKeyInfo: ECDSA P-256/P-384 or RSA
/// 2048/3072/4096.
fn csr_key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyType, KeyError> {
    use x509_parser::public_key::PublicKey;
    let unsupported = |what: String| {
        KeyError::BadCsr(format!(
            "its key is {what}; certsmith orders ec-p256, ec-p384, rsa2048, rsa3072 or rsa4096 keys"
        ))
    };
    match spki.parsed() {
        Ok(PublicKey::EC(point)) => match point.key_size() {
            256 => Ok(KeyType::EcP256),
            384 => Ok(KeyType::EcP384),
            n => Err(unsupported(format!("an EC key of {n} bits"))),
        },
        Ok(PublicKey::RSA(rsa)) => match rsa.key_size() {
            2048 => Ok(KeyType::Rsa2048),
            3072 => Ok(KeyType::Rsa3072),
            4096 => Ok(KeyType::Rsa4096),
            n => Err(unsupported(format!("an RSA key of {n} bits"))),
        },
        Ok(_) => Err(unsupported("of another algorithm".to_owned())),
        Err(e) => Err(KeyError::BadCsr(format!(
            "its public key does not parse ({e})"
        ))),
    }
}

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key type name is not one of [`KeyType::ALL`].
    #[error("unknown key type '{0}'; use one of ec-p256, ec-p384, rsa2048, rsa3072, rsa4096")]
    UnknownKeyType(String),
    /// The crypto library failed to generate a key.
    #[error("cannot generate a {key_type} key: {reason}")]
    Generate {
        /// The key type.
        key_type: KeyType,
        /// The library's reason.
        reason: String,
    },
    /// The CSR could not be built (e.g. a name rcgen refuses).
    #[error("cannot build the certificate request: {0}")]
    Csr(String),
    /// A CSR given by the user cannot be used.
    #[error("the certificate request cannot be used: {0}")]
    BadCsr(String),
    /// A stored private key does not parse (the reason never quotes it).
    #[error("the private key does not parse: {0}")]
    Unreadable(String),
}

/// Whether the private key `privkey_pem` belongs to `public_key`, the raw
/// public key bits of a certificate (its SubjectPublicKeyInfo's BIT STRING).
pub fn key_matches(privkey_pem: &PrivateKeyPem, public_key: &[u8]) -> Result<bool, KeyError> {
    let key =
        KeyPair::from_pem(privkey_pem.expose()).map_err(|e| KeyError::Unreadable(e.to_string()))?;
    Ok(key.der_bytes() == public_key)
}

/// Generates a key of `key_type`. RSA keys of 3072 bits and more take long:
/// call this from a blocking thread ([`KeyType::is_slow`]).
pub fn generate_key(key_type: KeyType) -> Result<KeyPair, KeyError> {
    let result = match key_type {
        KeyType::EcP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyType::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
        KeyType::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
    };
    result.map_err(|e| KeyError::Generate {
        key_type,
        reason: e.to_string(),
    })
}

/// Generates a key of `key_type` and a CSR whose subjectAltNames are
/// `domains` (ASCII, `*.` allowed). The first domain is also the subject's
/// common name when it fits the 64-character limit of
/// [RFC 5280](https://www.rfc-editor.org/rfc/rfc5280#appendix-A.1).
pub fn key_and_csr(key_type: KeyType, domains: &[String]) -> Result<KeyAndCsr, KeyError> {
    let key = generate_key(key_type)?;
    let csr_der = csr_for(&key, domains)?;
    Ok(KeyAndCsr {
        key_type,
        private_key: Some(PrivateKeyPem(key.serialize_pem())),
        csr_der,
    })
}

/// A CSR for `domains` signed by an existing key (`--reuse-key`): the
/// renewal certifies the same public key.
pub fn csr_with_key(
    key_type: KeyType,
    private_key: &PrivateKeyPem,
    domains: &[String],
) -> Result<KeyAndCsr, KeyError> {
    let key =
        KeyPair::from_pem(private_key.expose()).map_err(|e| KeyError::Unreadable(e.to_string()))?;
    let csr_der = csr_for(&key, domains)?;
    Ok(KeyAndCsr {
        key_type,
        private_key: Some(private_key.clone()),
        csr_der,
    })
}

/// The subjectAltNames are DNS names, or IP addresses (RFC 8738) for
/// identifiers that parse as one (rcgen tells them apart the same way).
fn csr_for(key: &KeyPair, domains: &[String]) -> Result<Vec<u8>, KeyError> {
    let mut params =
        CertificateParams::new(domains.to_vec()).map_err(|e| KeyError::Csr(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    // An IP address is never a common name (CA/B Forum BR 7.1.4.3 allows
    // one, but Let's Encrypt's IP certificates carry none): no CN then.
    if let Some(first) = domains
        .first()
        .filter(|d| d.len() <= 64 && d.parse::<std::net::IpAddr>().is_err())
    {
        dn.push(DnType::CommonName, first.as_str());
    }
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(key)
        .map_err(|e| KeyError::Csr(e.to_string()))?;
    Ok(csr.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    fn sans(csr_der: &[u8]) -> Vec<String> {
        let (_, csr) = X509CertificationRequest::from_der(csr_der).expect("CSR parses");
        let mut out = Vec::new();
        for ext in csr.requested_extensions().expect("has extensions") {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let GeneralName::DNSName(d) = name {
                        out.push((*d).to_owned());
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_key_type_makes_a_parseable_csr_with_the_sans() {
        let domains = vec!["a.example".to_owned(), "*.b.example".to_owned()];
        for kt in KeyType::ALL {
            let out = key_and_csr(kt, &domains).unwrap_or_else(|e| panic!("{kt}: {e}"));
            assert_eq!(sans(&out.csr_der), domains, "{kt}");
            let (_, csr) = X509CertificationRequest::from_der(&out.csr_der).expect("parses");
            let spki = &csr.certification_request_info.subject_pki;
            let alg = spki.algorithm.algorithm.to_id_string();
            let expect_alg = if kt.as_str().starts_with("rsa") {
                "1.2.840.113549.1.1.1"
            } else {
                "1.2.840.10045.2.1"
            };
            assert_eq!(alg, expect_alg, "{kt}");
            if let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() {
                let bits = rsa.key_size();
                let want = match kt {
                    KeyType::Rsa2048 => 2048,
                    KeyType::Rsa3072 => 3072,
                    _ => 4096,
                };
                assert_eq!(bits, want, "{kt}");
            }
            let key = out.private_key.as_ref().expect("a key");
            assert!(key.expose().starts_with("-----BEGIN PRIVATE KEY-----"));
            // The key round-trips through rcgen.
            KeyPair::from_pem(key.expose()).expect("key parses");
        }
    }

    /// A CSR made elsewhere reads back with its names and key type, in
    /// DER and PEM; something else is refused saying why.
    #[test]
    fn user_csr_reads_names_and_key_type() {
        let names = vec![
            "a.example".to_owned(),
            "192.0.2.1".to_owned(),
            "::1".to_owned(),
        ];
        for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let made = key_and_csr(kt, &names).expect("csr");
            let csr = read_csr(&made.csr_der).expect("DER reads");
            assert_eq!(csr.names, names, "{kt}");
            assert_eq!(csr.key_type, kt);
            let from_pem = read_csr(csr.to_pem().as_bytes()).expect("PEM reads");
            assert_eq!(from_pem, csr);
            assert!(!format!("{csr:?}").contains("der"), "Debug shows no bytes");
        }
        let e = read_csr(b"not a csr").expect_err("garbage");
        assert!(e.to_string().contains("neither a PEM nor a DER"), "{e}");
        let e = read_csr(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .expect_err("a certificate");
        assert!(e.to_string().contains("CERTIFICATE REQUEST"), "{e}");
    }

    #[test]
    fn private_key_debug_is_redacted() {
        let out = key_and_csr(KeyType::EcP256, &["a.example".to_owned()]).expect("key");
        let dbg = format!("{out:?}");
        assert!(dbg.contains("[redacted]"), "{dbg}");
        assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
    }

    #[test]
    fn key_type_names_round_trip() {
        for kt in KeyType::ALL {
            assert_eq!(kt.as_str().parse::<KeyType>().expect("parses"), kt);
        }
        assert!("rsa1024".parse::<KeyType>().is_err());
        assert_eq!(KeyType::default(), KeyType::EcP256);
    }
}
