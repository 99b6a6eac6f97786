//! A set of listeners shared by all concurrent challenges of one kind.
//!
//! Both http-01 and tls-alpn-01 need the same life cycle, which is easy to
//! get subtly wrong, so it is written once here:
//!
//! * the listeners start on the first `present` (a solver that is configured
//!   but never used must not hold port 80);
//! * every presented challenge is an entry keyed by its token, so presenting
//!   the same token twice counts once, and removing an unknown token is a
//!   no-op;
//! * the listeners close when the last entry is removed, and `remove` waits
//!   until the sockets are really closed, so that a `present` right after it
//!   can bind the same port again.
//!
//! The life cycle is guarded by a tokio mutex because `remove` holds it
//! across the wait for the accept loops to end. Connection handlers read the
//! entries through a separate `std` lock, which is never held across an
//! `.await` (rustls' certificate resolver is a synchronous callback).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use certsmith_plugin_api::{PluginError, log};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::listen::{self, Setting};

/// The entries of a [`Service`], keyed by token, as connection handlers see them.
pub(crate) struct Entries<E>(RwLock<HashMap<String, E>>);

impl<E> Default for Entries<E> {
    fn default() -> Self {
        Entries(RwLock::new(HashMap::new()))
    }
}

impl<E> Entries<E> {
    /// Reads the entries. A poisoned lock only means a panic happened while
    /// it was held; insert and remove leave the map consistent regardless.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, HashMap<String, E>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, E>> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Lazily started listeners plus the challenges they answer.
pub(crate) struct Service<E> {
    /// For log messages: "http-01" or "tls-alpn-01".
    name: &'static str,
    setting: Setting,
    addrs: Vec<SocketAddr>,
    entries: Arc<Entries<E>>,
    /// The accept loops while the listeners are open.
    running: tokio::sync::Mutex<Option<Vec<JoinHandle<()>>>>,
}

impl<E> fmt::Debug for Service<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("addrs", &self.addrs)
            .field("entries", &self.entries.read().len())
            .finish_non_exhaustive()
    }
}

/// A host that destroys the instance without cleaning up (it should not, but
/// it may be shutting down) must not leave port 80 held for the life of the
/// process: the accept loops are detached tasks that would outlive us.
impl<E> Drop for Service<E> {
    fn drop(&mut self) {
        if let Some(loops) = self.running.get_mut().take() {
            for l in loops {
                l.abort();
            }
        }
    }
}

impl<E: Send + Sync + 'static> Service<E> {
    pub(crate) fn new(name: &'static str, setting: Setting, addrs: Vec<SocketAddr>) -> Self {
        Service {
            name,
            setting,
            addrs,
            entries: Arc::new(Entries::default()),
            running: tokio::sync::Mutex::new(None),
        }
    }

    /// The entries, as connection handlers see them.
    pub(crate) fn entries(&self) -> Arc<Entries<E>> {
        self.entries.clone()
    }

    /// Adds (or replaces) the entry for `token`, starting the listeners
    /// first if none are open. `spawn` receives the freshly bound listeners
    /// and the shared entries and starts one accept loop per listener.
    ///
    /// Everything after the lock is acquired is synchronous, so a caller
    /// cancelled at any point leaves either nothing or a complete state.
    pub(crate) async fn add(
        &self,
        token: &str,
        entry: E,
        spawn: impl FnOnce(Vec<TcpListener>, Arc<Entries<E>>) -> Vec<JoinHandle<()>>,
    ) -> Result<(), PluginError> {
        let mut running = self.running.lock().await;
        if running.is_none() {
            let listeners = listen::bind_all(self.setting, &self.addrs)?;
            let addrs: Vec<String> = listeners
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .map(|a| a.to_string())
                .collect();
            log::info!("{}: listening on {}", self.name, addrs.join(", "));
            *running = Some(spawn(listeners, self.entries.clone()));
        }
        self.entries.write().insert(token.to_owned(), entry);
        Ok(())
    }

    /// Removes the entry for `token` (absent is fine) and, if it was the
    /// last one, closes the listeners and waits until they are closed.
    pub(crate) async fn remove(&self, token: &str) {
        let mut running = self.running.lock().await;
        let now_empty = {
            let mut entries = self.entries.write();
            entries.remove(token);
            entries.is_empty()
        };
        if !now_empty {
            return;
        }
        let Some(loops) = running.take() else {
            return;
        };
        for l in &loops {
            l.abort();
        }
        for l in loops {
            // An aborted task's future, and with it the listener, is dropped
            // before its JoinHandle resolves.
            let _ = l.await;
        }
        log::info!("{}: listeners closed", self.name);
    }
}
