//! The async adapter: a plugin instance whose calls are Rust futures.
//!
//! A call hands the plugin a [`Completion`] whose context is a boxed oneshot
//! sender. The future awaits the receiver under a host-side timeout; if the
//! future is dropped first (timeout, Ctrl-C, an order abandoned), a guard
//! calls the plugin's `cancel`. The completion still arrives later and frees
//! the box, so nothing leaks and nothing is freed twice.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certsmith_plugin_api::abi::{
    Bytes, Completion, STATUS_CANCELLED, STATUS_ERROR, STATUS_OK, STATUS_PANICKED,
    STATUS_UNSUPPORTED,
};
use certsmith_plugin_api::{
    ChallengeRequest, CleanupParams, CredentialsCheck, CredentialsChecked, ErrorBody, ErrorKind,
    METHOD_CHECK_CREDENTIALS, METHOD_CLEANUP, METHOD_PRESENT, Manifest, Presented,
};
use tokio::sync::oneshot;

use super::config::{ConfigSources, ResolvedConfig, resolve};
use super::error::{CallError, PluginHostError};
use super::load::LoadedPlugin;

/// Extra time the host allows past a request's deadline before it gives up
/// on the plugin: the plugin's own deadline handling should fire first and
/// produce a better message.
const GRACE: Duration = Duration::from_secs(5);

type Reply = (u32, Vec<u8>);

/// The ABI minor that added `check_credentials`.
const CHECK_CREDENTIALS_MINOR: u16 = 2;

/// The completion callback for `invoke` and `create`.
unsafe extern "C" fn on_done(ctx: *mut c_void, status: u32, body: Bytes) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `ctx` is the `Box<oneshot::Sender<Reply>>` leaked in
        // `call`, and the ABI guarantees `done` runs exactly once, so the box
        // is reclaimed exactly once.
        let tx = unsafe { Box::from_raw(ctx.cast::<oneshot::Sender<Reply>>()) };
        // SAFETY: the body is valid for the duration of this call; we copy it.
        let body = unsafe { body.as_slice() }.to_vec();
        // The receiver is gone if the host stopped waiting; that is fine.
        let _ = tx.send((status, body));
    });
}

/// A configured, live plugin instance. Cheap to clone; the plugin's
/// `destroy` runs when the last clone (and the last call) is gone.
#[derive(Clone, Debug)]
pub struct SolverInstance {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    plugin: Arc<LoadedPlugin>,
    ptr: *mut c_void,
    config: ResolvedConfig,
}

// SAFETY: the ABI requires plugin instances to accept `invoke`/`cancel` from
// any thread concurrently (the SDK's instance is an `Arc` of `Send + Sync`
// data), and `destroy` runs once, from Drop, when no call holds a reference.
unsafe impl Send for Inner {}
// SAFETY: as above; `&Inner` only ever passes `ptr` to the plugin.
unsafe impl Sync for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from this plugin's `create`, and this is the only
        // place that destroys it; every in-flight call holds an Arc<Inner>,
        // so none can follow.
        unsafe { (self.plugin.vtable.destroy)(self.ptr) }
    }
}

/// Calls `cancel` for an operation unless disarmed.
struct CancelOnDrop {
    inner: Arc<Inner>,
    op: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            // SAFETY: the instance is alive (we hold an Arc); unknown or
            // finished op ids are ignored by contract.
            unsafe { (self.inner.plugin.vtable.cancel)(self.inner.ptr, self.op) }
        }
    }
}

impl LoadedPlugin {
    /// Validates a configuration against the manifest and creates an instance.
    pub fn instantiate(
        self: &Arc<Self>,
        sources: &ConfigSources<'_>,
    ) -> Result<SolverInstance, PluginHostError> {
        let config = resolve(self.manifest(), sources)?;
        SolverInstance::create(self.clone(), config)
    }
}

fn parse_error(body: &[u8], fallback: &str) -> ErrorBody {
    serde_json::from_slice::<ErrorBody>(body)
        .unwrap_or_else(|_| ErrorBody::new(ErrorKind::Internal, fallback))
}

impl SolverInstance {
    fn create(plugin: Arc<LoadedPlugin>, config: ResolvedConfig) -> Result<Self, PluginHostError> {
        let json = config.to_json();
        let (tx, mut rx) = oneshot::channel::<Reply>();
        let ctx = Box::into_raw(Box::new(tx)).cast::<c_void>();
        // SAFETY: `create` borrows the JSON for the call only; `ctx` is a
        // leaked box reclaimed by `on_done` if the plugin reports an error.
        let ptr = unsafe {
            (plugin.vtable.create)(Bytes::from_slice(&json), Completion { ctx, done: on_done })
        };
        let code = plugin.manifest().code.clone();
        if ptr.is_null() {
            let (status, body) = rx.try_recv().unwrap_or((STATUS_ERROR, Vec::new()));
            let e = parse_error(&body, "the plugin refused to start and said nothing");
            let message = config.redactor().redact(&e.message);
            let message = if status == STATUS_PANICKED {
                format!("it panicked: {message}")
            } else {
                message
            };
            return Err(PluginHostError::Create {
                code,
                message,
                kind: Some(e.kind),
            });
        }
        // On success the plugin never calls the completion: reclaim the box.
        // SAFETY: contract of `create`: non-null result ⇒ `on_error` unused,
        // so `ctx` is still ours.
        drop(unsafe { Box::from_raw(ctx.cast::<oneshot::Sender<Reply>>()) });
        Ok(SolverInstance {
            inner: Arc::new(Inner {
                plugin,
                ptr,
                config,
            }),
        })
    }

    /// The plugin's manifest.
    pub fn manifest(&self) -> &Manifest {
        self.inner.plugin.manifest()
    }

    /// The solver code.
    pub fn code(&self) -> &str {
        &self.inner.plugin.manifest().code
    }

    /// The loaded library.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.inner.plugin
    }

    /// The validated configuration.
    pub fn config(&self) -> &ResolvedConfig {
        &self.inner.config
    }

    /// Replaces this instance's secret values in `text`.
    pub fn redact(&self, text: &str) -> String {
        self.inner.config.redactor().redact(text)
    }

    /// Non-secret options set explicitly, for `lineage.toml`.
    pub fn public_options(&self) -> BTreeMap<String, toml::Value> {
        self.inner.config.public_options()
    }

    /// Where each explicitly set option came from (see
    /// [`ResolvedConfig::option_sources`]).
    pub fn option_sources(&self) -> BTreeMap<String, String> {
        self.config().option_sources()
    }

    /// Presents a challenge.
    pub async fn present(&self, req: &ChallengeRequest) -> Result<Presented, CallError> {
        let params = serde_json::to_vec(req).unwrap_or_default();
        let body = self
            .call(METHOD_PRESENT, &params, timeout_for(req.deadline_unix_ms))
            .await?;
        serde_json::from_slice(&body).map_err(|e| {
            CallError::Plugin(ErrorBody::internal(format!(
                "the plugin's present result is not valid: {e}"
            )))
        })
    }

    /// Removes what `present` created.
    pub async fn cleanup(
        &self,
        req: &ChallengeRequest,
        presented: &Presented,
    ) -> Result<(), CallError> {
        let params = serde_json::to_vec(&CleanupParams {
            request: req.clone(),
            presented: presented.clone(),
        })
        .unwrap_or_default();
        self.call(METHOD_CLEANUP, &params, timeout_for(req.deadline_unix_ms))
            .await
            .map(|_| ())
    }

    /// Asks the plugin whether its credentials are accepted (ABI 1.2's
    /// optional `check_credentials`). `Ok(None)`: the plugin has no such
    /// check — it answered "unsupported", or was built for an ABI minor
    /// before 1.2 and is not asked at all (it could not know the method).
    pub async fn check_credentials(
        &self,
        req: &CredentialsCheck,
    ) -> Result<Option<CredentialsChecked>, CallError> {
        if self.inner.plugin.abi_minor() < CHECK_CREDENTIALS_MINOR {
            return Ok(None);
        }
        let params = serde_json::to_vec(req).unwrap_or_default();
        match self
            .call(
                METHOD_CHECK_CREDENTIALS,
                &params,
                timeout_for(req.deadline_unix_ms),
            )
            .await
        {
            Ok(body) => serde_json::from_slice(&body).map(Some).map_err(|e| {
                CallError::Plugin(ErrorBody::internal(format!(
                    "the plugin's check_credentials result is not valid: {e}"
                )))
            }),
            Err(CallError::Unsupported(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Invokes any method with a host-side timeout.
    pub async fn call(
        &self,
        method: &str,
        params: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let (tx, rx) = oneshot::channel::<Reply>();
        let ctx = Box::into_raw(Box::new(tx)).cast::<c_void>();
        // SAFETY: the instance is alive (self holds an Arc); method and params
        // are borrowed for the call only; `ctx` is reclaimed by `on_done`,
        // which the plugin calls exactly once.
        let op = unsafe {
            (self.inner.plugin.vtable.invoke)(
                self.inner.ptr,
                Bytes::from_slice(method.as_bytes()),
                Bytes::from_slice(params),
                Completion { ctx, done: on_done },
            )
        };
        let mut guard = CancelOnDrop {
            inner: self.inner.clone(),
            op,
            armed: true,
        };
        let reply = tokio::time::timeout(timeout, rx).await;
        let (status, body) = match reply {
            Ok(Ok(r)) => {
                guard.armed = false;
                r
            }
            Ok(Err(_)) => {
                guard.armed = false;
                return Err(CallError::Plugin(ErrorBody::internal(
                    "the plugin dropped the operation without an answer",
                )));
            }
            // The guard cancels the operation as it drops.
            Err(_) => return Err(CallError::TimedOut(timeout)),
        };
        let redact = |s: &str| self.redact(s);
        match status {
            STATUS_OK => Ok(body),
            STATUS_ERROR => {
                let mut e = parse_error(&body, "the plugin failed without a message");
                e.message = redact(&e.message);
                Err(CallError::Plugin(e))
            }
            STATUS_PANICKED => {
                let e = parse_error(&body, "no message");
                Err(CallError::Panicked(redact(&e.message)))
            }
            STATUS_CANCELLED => Err(CallError::Cancelled),
            STATUS_UNSUPPORTED => Err(CallError::Unsupported(method.to_owned())),
            other => Err(CallError::Plugin(ErrorBody::internal(format!(
                "the plugin answered with unknown status {other}"
            )))),
        }
    }
}

/// The host's patience for a call whose request carries `deadline_unix_ms`.
pub(crate) fn timeout_for(deadline_unix_ms: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Duration::from_millis(deadline_unix_ms.saturating_sub(now)) + GRACE
}
