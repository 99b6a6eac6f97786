//! tls-alpn-01 (RFC 8737): a TLS listener that only speaks `acme-tls/1`.
//!
//! The CA connects with ALPN `acme-tls/1` and the identifier as SNI and
//! expects a self-signed certificate for that identifier carrying the
//! critical `acmeIdentifier` extension (OID 1.3.6.1.5.5.7.1.31) whose value
//! is the SHA-256 digest of the key authorization. Nothing else is served:
//! after the handshake the connection is closed. This module makes those
//! certificates and picks one per handshake by SNI; the listener life cycle
//! is [`crate::service`]'s.
//!
//! Only rustls' aws-lc-rs provider is used, explicitly, so the plugin never
//! depends on a process-wide default provider being installed.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use certsmith_plugin_api::{PluginError, log};
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::service::Entries;

/// The ALPN protocol id of tls-alpn-01.
pub(crate) const ACME_TLS_1: &[u8] = b"acme-tls/1";
/// How long a client may take for the whole handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once per listener.
const MAX_CONNECTIONS: usize = 512;

/// One presented tls-alpn-01 challenge.
pub(crate) struct TlsEntry {
    /// The SNI the CA sends: the lowercased identifier, or for an IP
    /// address its reverse-DNS name (RFC 8738 §6).
    sni: String,
    /// Orders entries for one identifier; the newest wins.
    seq: u64,
    key: Arc<CertifiedKey>,
}

impl fmt::Debug for TlsEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsEntry")
            .field("sni", &self.sni)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// Presented tls-alpn-01 challenges by token.
pub(crate) type TlsEntries = Entries<TlsEntry>;

/// Makes validation certificates and the server configuration.
#[derive(Debug)]
pub(crate) struct Tls {
    provider: Arc<CryptoProvider>,
    seq: AtomicU64,
}

impl Tls {
    pub(crate) fn new() -> Self {
        Tls {
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            seq: AtomicU64::new(0),
        }
    }

    /// The self-signed validation certificate for `identifier`.
    pub(crate) fn entry(
        &self,
        identifier: &str,
        key_authorization: &str,
    ) -> Result<TlsEntry, PluginError> {
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes());
        let mut params = CertificateParams::new(vec![identifier.to_owned()]).map_err(|e| {
            PluginError::config(format!(
                "tls-alpn-01: {identifier:?} cannot be a certificate name: {e}"
            ))
        })?;
        params
            .custom_extensions
            .push(CustomExtension::new_acme_identifier(digest.as_ref()));
        let key_pair = KeyPair::generate()
            .map_err(|e| PluginError::internal(format!("tls-alpn-01: key generation: {e}")))?;
        let cert = params.self_signed(&key_pair).map_err(|e| {
            PluginError::internal(format!("tls-alpn-01: signing the certificate: {e}"))
        })?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
        // Not `CertifiedKey::from_der`: its key/certificate consistency check
        // parses the certificate with webpki, which rejects the (critical,
        // unknown to it) acmeIdentifier extension.
        let key = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| PluginError::internal(format!("tls-alpn-01: loading the key: {e}")))?;
        let key = CertifiedKey::new(vec![cert.der().clone()], key);
        Ok(TlsEntry {
            sni: sni_for(identifier),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            key: Arc::new(key),
        })
    }

    /// A server configuration answering from `entries`.
    pub(crate) fn server_config(
        &self,
        entries: Arc<TlsEntries>,
    ) -> Result<Arc<ServerConfig>, PluginError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PluginError::internal(format!("tls-alpn-01: TLS setup: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(entries)));
        config.alpn_protocols = vec![ACME_TLS_1.to_vec()];
        Ok(Arc::new(config))
    }
}

/// The SNI a CA sends for `identifier`.
fn sni_for(identifier: &str) -> String {
    match identifier.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            let o = ip.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        Ok(IpAddr::V6(ip)) => {
            let mut name = String::with_capacity(72);
            for byte in ip.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name.push_str("ip6.arpa");
            name
        }
        Err(_) => identifier.trim_end_matches('.').to_ascii_lowercase(),
    }
}

/// Picks the certificate by SNI, and refuses handshakes that are not
/// tls-alpn-01 validations (no `acme-tls/1` offered, or an unknown name).
struct Resolver(Arc<TlsEntries>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offers_acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_1));
        if !offers_acme {
            log::debug!("tls-alpn-01: refusing a client that does not offer acme-tls/1");
            return None;
        }
        let sni = hello.server_name()?.trim_end_matches('.');
        let entries = self.0.read();
        let found = entries
            .values()
            .filter(|e| e.sni.eq_ignore_ascii_case(sni))
            .max_by_key(|e| e.seq)
            .map(|e| e.key.clone());
        if found.is_none() {
            log::debug!("tls-alpn-01: no challenge presented for {sni:?}");
        }
        found
    }
}

/// Starts one accept loop per listener.
pub(crate) fn spawn(listeners: Vec<TcpListener>, config: Arc<ServerConfig>) -> Vec<JoinHandle<()>> {
    let acceptor = TlsAcceptor::from(config);
    listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, acceptor.clone())))
        .collect()
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    log::warn!("tls-alpn-01: too many connections, dropping one from {peer}");
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(mut tls)) => {
                            let alpn_ok = tls.get_ref().1.alpn_protocol() == Some(ACME_TLS_1);
                            log::debug!(
                                "tls-alpn-01: {peer}: handshake done (acme-tls/1: {alpn_ok})"
                            );
                            // RFC 8737 §3: the validation is the handshake;
                            // close right away.
                            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.shutdown()).await;
                        }
                        Ok(Err(e)) => log::debug!("tls-alpn-01: {peer}: handshake failed: {e}"),
                        Err(_) => log::debug!("tls-alpn-01: {peer}: handshake timed out"),
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                log::warn!("tls-alpn-01: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_names() {
        assert_eq!(sni_for("Example.COM."), "example.com");
        assert_eq!(sni_for("192.0.2.1"), "1.2.0.192.in-addr.arpa");
        assert_eq!(
            sni_for("2001:db8::1"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }
}
