//! A throw-away CA and a `localhost`/127.0.0.1 server certificate, for
//! Pebble's own HTTPS listener (and any other TLS server a test runs).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::HarnessError;

/// A local CA and one leaf certificate it signed for `localhost` and
/// `127.0.0.1`, all PEM.
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA certificate (trust this one).
    pub ca_cert_pem: String,
    /// The leaf certificate for `localhost` and IP 127.0.0.1.
    pub leaf_cert_pem: String,
    /// The leaf's private key (PKCS#8).
    pub leaf_key_pem: String,
    ca_der: Vec<u8>,
}

impl TestCa {
    /// Generate a fresh CA (ECDSA P-256) and leaf.
    pub fn generate() -> Result<Self, HarnessError> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "certsmith test harness CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()])?;
        leaf_params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;

        Ok(Self {
            ca_cert_pem: ca_cert.pem(),
            leaf_cert_pem: leaf.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
            ca_der: ca_cert.der().to_vec(),
        })
    }

    /// The CA certificate, DER.
    pub fn ca_cert_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// A rustls client configuration that trusts only this CA.
    pub(crate) fn rustls_client_config(&self) -> Result<Arc<rustls::ClientConfig>, HarnessError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.ca_der.clone()))
            .map_err(|e| HarnessError::Tls(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HarnessError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// A reqwest client that trusts only this CA.
    pub(crate) fn reqwest_client(&self) -> Result<reqwest::Client, HarnessError> {
        let cert = reqwest::Certificate::from_pem(self.ca_cert_pem.as_bytes())
            .map_err(|e| HarnessError::Tls(e.to_string()))?;
        reqwest::Client::builder()
            .tls_certs_only([cert])
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .map_err(|e| HarnessError::Tls(e.to_string()))
    }
}
