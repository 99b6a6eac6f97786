//! The pending-order record around finalization, and resuming from it.
//!
//! Why this module exists: a certificate the CA issued must never be lost
//! to a failure on our side (a download that failed, a run killed while
//! waiting). Before finalizing, the order's URL, the key and the CSR are
//! stored; the next order of the same certificate picks that order up
//! (`docs/design.md` §4.1).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{CertRequest, Engine, IssuedCert};
use crate::acme::{Order, Resumable};
use crate::error::{ErrorClass, IssueError};
use crate::keys::{KeyAndCsr, KeyType, PrivateKeyPem};
use crate::progress::ProgressEvent;
use crate::store::PendingOrder;
use crate::timefmt::now_rfc3339;

impl Engine {
    /// Records `order` as about to be finalized with `key`.
    pub(super) async fn record_pending(
        &self,
        name: &str,
        order: &Order,
        domains: &[String],
        key: &KeyAndCsr,
    ) -> Result<(), IssueError> {
        let pending = PendingOrder {
            server: self.inner.client.directory_url().to_owned(),
            order_url: order.url().to_owned(),
            domains: domains.to_vec(),
            key_type: key.key_type.as_str().to_owned(),
            // Empty for the user's CSR: there is no key of ours.
            privkey_pem: key
                .private_key
                .as_ref()
                .map(|k| k.expose().to_owned())
                .unwrap_or_default(),
            csr_der_b64: URL_SAFE_NO_PAD.encode(&key.csr_der),
            finalized_at: now_rfc3339(),
            pid: std::process::id(),
            pid_start: crate::journal::own_start_time(),
            boot_id: crate::journal::boot_id().to_owned(),
        };
        let (store, name) = (self.inner.store.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || store.put_pending_order(&name, &pending))
            .await
            .map_err(|e| IssueError::Internal(format!("the store writer failed: {e}")))??;
        Ok(())
    }

    /// After a failed finalization: the record stays when a later run may
    /// still find the certificate (the CA or the network failed us, or the
    /// run was interrupted), and goes when the CA refused the order.
    pub(super) async fn forget_pending_unless_resumable(
        &self,
        name: &str,
        order_url: &str,
        e: &IssueError,
    ) {
        let resumable = matches!(
            e.class(),
            ErrorClass::Network | ErrorClass::Cancelled | ErrorClass::Store | ErrorClass::Internal
        );
        if !resumable {
            self.forget_pending(name, order_url).await;
        }
    }

    /// Forgets the pending order of `name` at `order_url`.
    pub(super) async fn forget_pending(&self, name: &str, order_url: &str) {
        let (store, name, url) = (
            self.inner.store.clone(),
            name.to_owned(),
            order_url.to_owned(),
        );
        if let Ok(Err(e)) =
            tokio::task::spawn_blocking(move || store.remove_pending_order(&name, &url)).await
        {
            log::warn!("{e}");
        }
    }

    /// Picks up the pending order of `req.name` when there is one for the
    /// same CA and names: downloads (or finalizes anew) and stores its
    /// certificate. `None` when there is nothing to pick up.
    pub(super) async fn resume_pending(
        &self,
        req: &CertRequest,
        domains: &[String],
    ) -> Result<Option<IssuedCert>, IssueError> {
        let inner = &self.inner;
        let (store, name) = (inner.store.clone(), req.name.clone());
        let pending = tokio::task::spawn_blocking(move || store.pending_order(&name))
            .await
            .map_err(|e| IssueError::Internal(format!("the store reader failed: {e}")))?;
        let pending = match pending {
            // Another process is finalizing this certificate right now: its
            // order is its own. One of another machine cannot be checked:
            // it is taken over only by a worker holding the certificate's
            // lease (then the other worker's lease has passed to it).
            Ok(Some(p)) if !p.boot_id.is_empty() && p.boot_id != crate::journal::boot_id() => {
                if req.fence.is_none() {
                    return Ok(None);
                }
                p
            }
            Ok(Some(p)) if p.pid != 0 && crate::journal::process_alive(p.pid, p.pid_start) => {
                return Ok(None);
            }
            Ok(Some(p)) => p,
            Ok(None) => return Ok(None),
            Err(e) => {
                // A record that does not parse: ordering anew is all that
                // can be done, and the next commit replaces it.
                log::warn!("{e}; ordering anew");
                return Ok(None);
            }
        };
        if pending.server != inner.client.directory_url() || pending.domains != domains {
            log::info!(
                "{}: the pending order {} is for other names or another CA; ordering anew",
                req.name,
                pending.order_url
            );
            self.forget_pending(&req.name, &pending.order_url).await;
            return Ok(None);
        }
        let (Ok(key_type), Ok(csr_der)) = (
            pending.key_type.parse::<KeyType>(),
            URL_SAFE_NO_PAD.decode(&pending.csr_der_b64),
        ) else {
            log::warn!(
                "{}: the pending order record is damaged; ordering anew",
                req.name
            );
            self.forget_pending(&req.name, &pending.order_url).await;
            return Ok(None);
        };
        let account = self.inner.account.lock().await.1.clone();
        let mut order = match account.restore_order(&pending.order_url).await {
            Ok(o) => o,
            Err(e) if e.class() == ErrorClass::CaRefused => {
                log::info!(
                    "{}: the pending order is gone at the CA ({e}); ordering anew",
                    req.name
                );
                self.forget_pending(&req.name, &pending.order_url).await;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        order.prefer_chain(req.order.preferred_chain.clone());
        let timeout = inner.options.finalize_timeout;
        let chain = match order.resumable() {
            Resumable::Download => order.issued_certificate(timeout).await?,
            Resumable::Finalize => order.finalize(&csr_der, timeout).await?,
            _ => {
                log::info!(
                    "{}: the pending order can no longer be completed; ordering anew",
                    req.name
                );
                self.forget_pending(&req.name, &pending.order_url).await;
                return Ok(None);
            }
        };
        inner.progress.emit(ProgressEvent::OrderResumed {
            name: req.name.clone(),
            order_url: pending.order_url.clone(),
        });
        let key =
            (!pending.privkey_pem.is_empty()).then(|| PrivateKeyPem::new(pending.privkey_pem));
        self.store_issued(
            req,
            domains.to_vec(),
            key_type,
            key,
            &chain,
            &pending.order_url,
        )
        .await
        .map(Some)
    }
}
