//! Picking up an order that an earlier run finalized but did not see
//! through (it failed, or was killed, before the certificate was stored).
//!
//! Why this module exists: once an order is finalized the CA issues the
//! certificate whatever happens to the client, and ordering again would
//! spend the CA's rate limits on a duplicate. The order is read back from
//! its URL, and the certificate downloaded or the finalization repeated.

use std::time::Duration;

use instant_acme as ia;

use super::transport::{ORDER_SCOPE, OrderScope, retry_bad_nonce};
use super::{Account, Order};
use crate::error::IssueError;

/// What a restored order allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resumable {
    /// Issued or being issued: download the certificate.
    Download,
    /// Validated, never finalized (the CSR did not reach the CA): finalize.
    Finalize,
    /// Invalid, pending, expired: nothing to pick up.
    Gone,
}

impl Account {
    /// The order at `url` as the CA has it now
    /// ([RFC 8555 §7.1.3](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.3)).
    pub async fn restore_order(&self, url: &str) -> Result<Order, IssueError> {
        let scope = OrderScope::new();
        let inner = ORDER_SCOPE
            .scope(scope.clone(), async {
                retry_bad_nonce!(self.inner.order(url.to_owned()).await)
            })
            .await
            .map_err(|e| self.client.map_error(e, "read the order"))?;
        Ok(self.order(inner, scope))
    }
}

impl Order {
    /// What can be done with this (restored) order.
    pub fn resumable(&mut self) -> Resumable {
        match self.inner.state().status {
            ia::OrderStatus::Valid | ia::OrderStatus::Processing => Resumable::Download,
            ia::OrderStatus::Ready => Resumable::Finalize,
            _ => Resumable::Gone,
        }
    }

    /// The certificate chain (PEM) of an order finalized earlier, waiting
    /// up to `timeout` while the CA is still issuing it.
    pub async fn issued_certificate(&mut self, timeout: Duration) -> Result<String, IssueError> {
        let scope = self.scope.clone();
        ORDER_SCOPE.scope(scope, self.certificate_in(timeout)).await
    }
}
