//! tls-alpn-01 through the `Solver` trait, checked with a real rustls client
//! that captures the served certificate and inspects it with x509-parser.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use certsmith_plugin_api::{ChallengeRequest, ChallengeType, Presented, Solver};
use common::{is_open, request, solver};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use x509_parser::extensions::GeneralName;

const TLS_ALPN01: ChallengeType = ChallengeType::TlsAlpn01;
const ACME_TLS_1: &[u8] = b"acme-tls/1";
const ACME_IDENTIFIER_OID: &str = "1.3.6.1.5.5.7.1.31";

/// Accepts any certificate (the validation certificate is self-signed by
/// design) but keeps it, and still checks the handshake signatures.
#[derive(Debug)]
struct Capture {
    seen: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().expect("lock") = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}

/// Checks a handshake signature against the certificate's key with aws-lc-rs
/// directly: rustls' own helpers parse the certificate with webpki, which
/// (rightly, for a normal client) refuses the critical acmeIdentifier
/// extension. The solver's certificates use ECDSA P-256 (rcgen's default).
fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
    if dss.scheme != SignatureScheme::ECDSA_NISTP256_SHA256 {
        return Err(rustls::Error::General(format!(
            "unexpected scheme {:?}",
            dss.scheme
        )));
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| rustls::Error::General(format!("unparsable certificate: {e}")))?;
    let point = &parsed.public_key().subject_public_key.data;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .verify(message, dss.signature())
        .map_err(|_| rustls::Error::General("bad handshake signature".into()))?;
    Ok(HandshakeSignatureValid::assertion())
}

/// What a handshake produced.
struct Handshake {
    alpn: Option<Vec<u8>>,
    cert: CertificateDer<'static>,
}

async fn handshake(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<Handshake, std::io::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let capture = Arc::new(Capture {
        seen: Mutex::new(None),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).expect("a DNS name");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let cert = capture
        .seen
        .lock()
        .expect("lock")
        .take()
        .expect("a certificate was verified");
    Ok(Handshake { alpn, cert })
}

fn sha256(data: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data.as_bytes())
        .as_ref()
        .to_vec()
}

fn assert_validation_cert(der: &[u8], req: &ChallengeRequest) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a DER certificate");
    let san = cert
        .subject_alternative_name()
        .expect("a well-formed SAN")
        .expect("a SAN extension");
    let names: Vec<_> = san.value.general_names.iter().collect();
    assert_eq!(names.len(), 1, "exactly one SAN: {names:?}");
    assert!(
        matches!(names[0], GeneralName::DNSName(n) if *n == req.identifier),
        "SAN is the identifier: {names:?}"
    );
    let acme: Vec<_> = cert
        .extensions()
        .iter()
        .filter(|e| e.oid.to_id_string() == ACME_IDENTIFIER_OID)
        .collect();
    assert_eq!(acme.len(), 1, "one acmeIdentifier extension");
    assert!(acme[0].critical, "acmeIdentifier is critical");
    let mut want = vec![0x04, 0x20]; // DER OCTET STRING, 32 bytes
    want.extend(sha256(&req.key_authorization));
    assert_eq!(
        acme[0].value,
        want.as_slice(),
        "SHA-256 of the key authorization"
    );
}

#[tokio::test]
async fn serves_an_rfc8737_certificate_over_acme_tls_1() {
    let (s, _, addr) = solver();
    let req = request(TLS_ALPN01, "alpn.example.test", "tlstoken");
    s.present(&req).await.expect("present");

    let h = handshake(addr, "alpn.example.test", &[ACME_TLS_1])
        .await
        .expect("handshake");
    assert_eq!(h.alpn.as_deref(), Some(ACME_TLS_1));
    assert_validation_cert(&h.cert, &req);

    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup");
    assert!(
        !is_open(addr).await,
        "the TLS port closes after the last cleanup"
    );
}

#[tokio::test]
async fn picks_the_certificate_by_sni() {
    let (s, _, addr) = solver();
    let a = request(TLS_ALPN01, "a.example.test", "tokA");
    let b = request(TLS_ALPN01, "b.example.test", "tokB");
    s.present(&a).await.expect("present a");
    s.present(&b).await.expect("present b");

    let h = handshake(addr, "b.example.test", &[ACME_TLS_1])
        .await
        .expect("handshake b");
    assert_validation_cert(&h.cert, &b);
    let h = handshake(addr, "A.Example.Test", &[ACME_TLS_1])
        .await
        .expect("handshake a, SNI case-insensitive");
    assert_validation_cert(&h.cert, &a);

    assert!(
        handshake(addr, "c.example.test", &[ACME_TLS_1])
            .await
            .is_err(),
        "an unknown name gets no certificate"
    );

    s.cleanup(&a, &Presented::default())
        .await
        .expect("cleanup a");
    assert!(
        handshake(addr, "a.example.test", &[ACME_TLS_1])
            .await
            .is_err(),
        "a is gone"
    );
    handshake(addr, "b.example.test", &[ACME_TLS_1])
        .await
        .expect("b still served");
    s.cleanup(&b, &Presented::default())
        .await
        .expect("cleanup b");
    assert!(!is_open(addr).await);
}

#[tokio::test]
async fn refuses_clients_without_acme_tls_1() {
    let (s, _, addr) = solver();
    let req = request(TLS_ALPN01, "alpn.example.test", "tlstoken");
    s.present(&req).await.expect("present");

    for (offered, why) in [
        (&[][..], "no ALPN offered"),
        (&[&b"h2"[..], b"http/1.1"][..], "other protocols only"),
    ] {
        let e = match handshake(addr, "alpn.example.test", offered).await {
            Ok(_) => panic!("{why}: handshake succeeded"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("alert"), "{why}: the server refuses: {e}");
    }
    handshake(addr, "alpn.example.test", &[b"h2", ACME_TLS_1])
        .await
        .expect("acme-tls/1 among others is fine");

    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn present_twice_then_cleanup_once_closes() {
    let (s, _, addr) = solver();
    let req = request(TLS_ALPN01, "alpn.example.test", "tlstoken");
    s.present(&req).await.expect("present");
    s.present(&req).await.expect("present again");
    handshake(addr, "alpn.example.test", &[ACME_TLS_1])
        .await
        .expect("handshake");
    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup");
    assert!(!is_open(addr).await);
    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup again");
}

#[tokio::test]
async fn http_and_tls_listeners_are_independent() {
    let (s, http_addr, tls_addr) = solver();
    let web = request(ChallengeType::Http01, "example.test", "webtoken");
    let tls = request(TLS_ALPN01, "example.test", "tlstoken");
    s.present(&tls).await.expect("present tls");
    assert!(!is_open(http_addr).await, "http-01 listener not started");
    s.present(&web).await.expect("present http");
    s.cleanup(&tls, &Presented::default())
        .await
        .expect("cleanup tls");
    assert!(!is_open(tls_addr).await);
    assert!(is_open(http_addr).await);
    s.cleanup(&web, &Presented::default())
        .await
        .expect("cleanup http");
    assert!(!is_open(http_addr).await);
}
