//! Alternate certificate chains
//! ([RFC 8555 §7.4.2](https://www.rfc-editor.org/rfc/rfc8555#section-7.4.2))
//! and choosing one by its issuer (`--preferred-chain`).
//!
//! Why this module exists: a CA may offer the same certificate under more
//! than one chain (Let's Encrypt did, to reach old Android devices through
//! a cross-signed root), linked from the certificate download with `Link:
//! <url>;rel="alternate"`. instant-acme 0.8 downloads the default chain
//! only and keeps no response header, so when a chain is preferred the
//! download, and the alternates', are POST-as-GET requests certsmith signs
//! with the account key (`jws`). The match is on the common name of the
//! issuer of the chain's topmost certificate, as certbot and lego do; no
//! match keeps the default chain, with a warning.

use x509_parser::prelude::{FromDer, X509Certificate};

use super::Order;
use super::jws::KeyRef;
use crate::error::IssueError;

/// The targets of `Link: <url>;rel="alternate"` headers.
pub(super) fn alternate_links(headers: &http::HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    for value in headers.get_all(http::header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        // One header may carry several links, comma-separated; a URL in
        // <> holds no unescaped comma.
        for link in value.split(',') {
            let mut parts = link.split(';');
            let Some(url) = parts
                .next()
                .map(str::trim)
                .and_then(|u| u.strip_prefix('<'))
                .and_then(|u| u.strip_suffix('>'))
            else {
                continue;
            };
            let alternate = parts.any(|p| {
                let p = p.trim().to_ascii_lowercase();
                p == "rel=\"alternate\"" || p == "rel=alternate"
            });
            if alternate {
                out.push(url.to_owned());
            }
        }
    }
    out
}

/// The common name of the issuer of the last certificate of a PEM chain
/// (the topmost one, signed by the root), if it has one.
pub fn top_issuer_cn(chain_pem: &str) -> Option<String> {
    let last = x509_parser::pem::Pem::iter_from_buffer(chain_pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .last()?;
    let (_, cert) = X509Certificate::from_der(&last.contents).ok()?;
    let cn = cert
        .issuer()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}

/// Picks the chain whose topmost issuer is `cn` among `chains` (the
/// default first): its index, or `None`.
pub(super) fn pick(chains: &[String], cn: &str) -> Option<usize> {
    chains
        .iter()
        .position(|c| top_issuer_cn(c).as_deref() == Some(cn))
}

impl Order {
    /// Downloads the certificate with the default chain and every
    /// alternate one, and returns the chain whose topmost issuer is `cn`,
    /// or the default one (with a warning naming what was offered).
    pub(super) async fn download_preferred(&mut self, cn: &str) -> Result<String, IssueError> {
        let action = "download the certificate";
        let Some(url) = self.inner.state().certificate.clone() else {
            return Err(IssueError::Internal(
                "the order is valid but has no certificate".to_owned(),
            ));
        };
        let Some((key, kid)) = self.signer.clone() else {
            log::warn!(
                "preferred chain '{cn}': the account key cannot sign the download; keeping the default chain"
            );
            return self.default_chain().await;
        };
        let doc = self.client.directory_doc().await?;
        let signer = (key.as_ref(), KeyRef::Kid(&kid));
        let first = self
            .client
            .post_jws_answer(&doc, &url, signer, None, action, None)
            .await?;
        let text = |body: &[u8], at: &str| {
            String::from_utf8(body.to_vec())
                .map_err(|_| IssueError::bad_answer(action, at, "the certificate is not UTF-8 PEM"))
        };
        let mut chains = vec![text(&first.body, &url)?];
        for alt in alternate_links(&first.headers) {
            let rsp = self
                .client
                .post_jws_answer(&doc, &alt, signer, None, action, None)
                .await?;
            chains.push(text(&rsp.body, &alt)?);
        }
        match pick(&chains, cn) {
            Some(i) => {
                if i > 0 {
                    log::info!("using the CA's alternate chain {i}, issued by '{cn}'");
                }
                Ok(chains.swap_remove(i))
            }
            None => {
                let offered: Vec<String> = chains
                    .iter()
                    .map(|c| top_issuer_cn(c).unwrap_or_else(|| "(no common name)".to_owned()))
                    .collect();
                log::warn!(
                    "no chain of the CA is issued by '{cn}' (preferred chain); keeping the default chain. The CA offers chains issued by: {}",
                    offered.join(", ")
                );
                Ok(chains.swap_remove(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternate_links_from_one_or_many_headers() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::LINK,
            http::HeaderValue::from_static("<https://ca/dir>;rel=\"index\""),
        );
        h.append(
            http::header::LINK,
            http::HeaderValue::from_static("<https://ca/cert/1/1>;rel=\"alternate\""),
        );
        h.append(
            http::header::LINK,
            http::HeaderValue::from_static(
                "<https://ca/cert/1/2>; rel=\"alternate\", <https://ca/x>;rel=\"up\"",
            ),
        );
        assert_eq!(
            alternate_links(&h),
            vec![
                "https://ca/cert/1/1".to_owned(),
                "https://ca/cert/1/2".to_owned()
            ]
        );
    }

    /// A chain leaf → intermediate, the intermediate signed by a root
    /// whose CN is given: picked by that CN, none for another.
    #[test]
    fn picks_the_chain_by_its_top_issuer() {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let chain = |root_cn: &str| {
            let root_key = KeyPair::generate().expect("key");
            let mut root = CertificateParams::new(Vec::new()).expect("params");
            root.distinguished_name.push(DnType::CommonName, root_cn);
            root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let root_cert = root.self_signed(&root_key).expect("root");
            let int_key = KeyPair::generate().expect("key");
            let mut int = CertificateParams::new(Vec::new()).expect("params");
            int.distinguished_name
                .push(DnType::CommonName, "Intermediate");
            int.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let issuer = rcgen::Issuer::new(root, root_key);
            let int_cert = int.signed_by(&int_key, &issuer).expect("intermediate");
            let leaf_key = KeyPair::generate().expect("key");
            let leaf = CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
            let int_issuer = rcgen::Issuer::new(int, int_key);
            let leaf_cert = leaf.signed_by(&leaf_key, &int_issuer).expect("leaf");
            drop(root_cert);
            format!("{}{}", leaf_cert.pem(), int_cert.pem())
        };
        let chains = vec![chain("Root A"), chain("Root B")];
        assert_eq!(top_issuer_cn(&chains[1]).as_deref(), Some("Root B"));
        assert_eq!(pick(&chains, "Root B"), Some(1));
        assert_eq!(pick(&chains, "Root A"), Some(0));
        assert_eq!(pick(&chains, "Root C"), None);
    }
}
