//! The plugin author's side: implement [`Solver`], call [`export_solver!`](crate::export_solver).
//!
//! Everything unsafe lives here, once, so that plugin authors write none:
//!
//! * **A runtime of its own.** tokio keeps its state in statics, and statics
//!   are duplicated per dynamic library: a future spawned on the host's
//!   runtime from inside the plugin would find no reactor. The SDK starts one
//!   small multi-threaded runtime per plugin library on first use and never
//!   shuts it down (libraries are never unloaded).
//! * **No panic crosses the boundary.** Unwinding through `extern "C"` aborts
//!   the process, so every entry point runs under `catch_unwind`, and every
//!   operation runs in a task whose panic is observed through its
//!   `JoinHandle` and reported as [`STATUS_PANICKED`].
//! * **Exactly one completion.** A [`Completion`] is owned by a guard that
//!   calls it on drop if nothing else did, so no code path can lose it.
//! * **Deadlines and cancellation.** `deadline_unix_ms` in a request bounds the
//!   solver's future; `cancel` aborts the task, which completes the operation
//!   with [`STATUS_CANCELLED`]. Inside the solver, [`ChallengeRequest::deadline`]
//!   gives the same deadline as a [`Deadline`], to size timeouts and retries.
//! * **Logs go to the host.** A [`log`] logger forwards records to
//!   [`HostApi::log`](crate::abi::HostApi), so `log::info!` in a plugin shows up
//!   in certsmith's output with the right level: `warn!` and `error!`
//!   always, `info!` with `-v`, `debug!` with `-vv`. `trace!` never crosses.
//!   The logger forwards every crate's records, so at `-vv` the plugin's
//!   dependencies (an HTTP client, say) log too; keep your own messages at
//!   `info!` for what a user wants to see with `-v`.
//!
//! And the helpers every provider plugin would otherwise write itself:
//!
//! * [`Secret`]: a credential with redacted `Debug`/`Display`, zeroed on drop.
//! * [`PluginError::from_http_status`] and [`PluginError::from_transport`]:
//!   HTTP answers and client failures as error kinds.
//! * [`retry`] with a [`Backoff`]: retries retryable errors within the
//!   request's [`Deadline`].
//! * [`NameLocks`]: one async lock (and state) per record name, for
//!   read-modify-write APIs. The host serializes calls at one name across
//!   processes; this serializes them inside the plugin.

use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::de::DeserializeOwned;

use crate::abi::{
    Bytes, Completion, HostApi, STATUS_CANCELLED, STATUS_ERROR, STATUS_OK, STATUS_PANICKED,
    STATUS_UNSUPPORTED, SolverVTable,
};
use crate::wire::{
    ChallengeRequest, CleanupParams, CredentialsCheck, CredentialsChecked, ErrorBody,
    METHOD_CHECK_CREDENTIALS, METHOD_CLEANUP, METHOD_PRESENT, PluginError, Presented,
};

pub use crate::http_errors::parse_retry_after;
pub use async_trait::async_trait;
pub use client::{HttpRequest, HttpResponse, header_value_ok};
pub use deadline::Deadline;
pub use locks::{NameGuard, NameLocks};
pub use names::relative_name;
pub use retry::{Backoff, retry};
pub use secret::Secret;

mod client;
mod deadline;
mod locks;
mod names;
mod retry;
mod secret;

/// A challenge solver. One instance is created per configuration and is
/// shared by all concurrent calls, so `present` and `cleanup` take `&self`
/// and must be safe to run concurrently.
///
/// The instance is dropped when the host destroys it and the last call in
/// flight has ended. Tasks or listeners the solver started itself are not
/// known to the SDK: stop them in `Drop`, or they outlive the instance.
#[async_trait]
pub trait Solver: Send + Sync + Sized + 'static {
    /// The configuration, deserialized from the JSON object the host built
    /// from `plugin.toml`'s `[config]` keys (already validated and typed).
    type Config: DeserializeOwned;

    /// Builds an instance. Return [`PluginError::config`] for values that
    /// parse but make no sense. Runs inside the plugin's runtime context.
    fn new(config: Self::Config) -> Result<Self, PluginError>;

    /// Makes the challenge answerable. Must be idempotent: presenting the
    /// same request twice leaves one answer in place.
    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError>;

    /// Removes exactly what `present` created. Must be idempotent: cleaning up
    /// something already gone is success.
    async fn cleanup(
        &self,
        req: &ChallengeRequest,
        presented: &Presented,
    ) -> Result<(), PluginError>;

    /// Asks the provider whether the configured credentials are accepted,
    /// changing nothing there (ABI 1.2; `certsmith doctor` calls it).
    /// Check what `present` will need: that the token is valid, that it
    /// may read the zones in [`CredentialsCheck::zones`]. Return an
    /// [`auth`](PluginError::auth) error for refused credentials, with a
    /// message that says which option to fix.
    ///
    /// The default, `None`, means "this solver has no such check": the
    /// host reports it as skipped, never as passed.
    async fn check_credentials(
        &self,
        req: &CredentialsCheck,
    ) -> Option<Result<CredentialsChecked, PluginError>> {
        let _ = req;
        None
    }
}

/// The plugin's runtime, started on first use and never shut down.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        // A failure to start two threads leaves the plugin unusable; there is
        // no caller to hand the error to, and the panic is caught at the entry
        // point and reported to the host as PANICKED.
        #[allow(clippy::expect_used)]
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("certsmith-plugin")
            .enable_all()
            .build()
            .expect("start the plugin's tokio runtime")
    })
}

static HOST: AtomicPtr<HostApi> = AtomicPtr::new(std::ptr::null_mut());

/// Gives this copy of the SDK a host's services without loading the plugin
/// as a library: [`HttpRequest::send`] then goes through `host`. What
/// `export_solver!`'s entry point does when certsmith loads the plugin,
/// minus log forwarding (in one process, log records already reach the
/// process's logger). For tests that call a [`Solver`] directly; certsmith's
/// own host is `certsmith_core::plugin::host_api()`.
pub fn attach_host(host: &'static HostApi) {
    HOST.store(std::ptr::from_ref(host).cast_mut(), Ordering::Release);
}

struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        let host = HOST.load(Ordering::Acquire);
        if host.is_null() || !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => crate::abi::LOG_ERROR,
            log::Level::Warn => crate::abi::LOG_WARN,
            log::Level::Info => crate::abi::LOG_INFO,
            log::Level::Debug => crate::abi::LOG_DEBUG,
            log::Level::Trace => crate::abi::LOG_TRACE,
        };
        let msg = record.args().to_string();
        let target = record.target();
        // SAFETY: `host` was handed to the entry point by the host, which
        // keeps it alive for the life of the process (abi module docs); it is
        // only read. `init_host` checked that its size covers `log`.
        unsafe {
            ((*host).log)(
                level,
                Bytes::from_slice(target.as_bytes()),
                Bytes::from_slice(msg.as_bytes()),
            );
        }
    }

    fn flush(&self) {}
}

/// Items used by [`export_solver!`](crate::export_solver). Not a public API.
#[doc(hidden)]
pub mod __private {
    use super::*;
    use crate::abi::PluginHeader;

    /// A header that can live in a `static` (it holds raw pointers, which are
    /// not `Sync`, but they point to immutable `'static` data).
    #[repr(transparent)]
    #[derive(Debug)]
    pub struct SyncHeader(pub PluginHeader);
    // SAFETY: the header and everything it points to is immutable 'static
    // data (a string literal and a static vtable).
    unsafe impl Sync for SyncHeader {}

    /// A vtable that can live in a `static`.
    #[repr(transparent)]
    #[derive(Debug)]
    pub struct SyncVTable(pub SolverVTable);
    // SAFETY: it holds only function pointers and integers.
    unsafe impl Sync for SyncVTable {}

    /// The flags word for this build.
    pub const fn flags() -> u32 {
        if cfg!(panic = "unwind") {
            crate::abi::FLAG_PANIC_UNWIND
        } else {
            0
        }
    }

    /// The vtable of solver type `S`.
    pub const fn vtable<S: Solver>() -> SolverVTable {
        SolverVTable {
            struct_size: size_of::<SolverVTable>() as u32,
            reserved: 0,
            create: create::<S>,
            destroy: destroy::<S>,
            invoke: invoke::<S>,
            cancel: cancel::<S>,
        }
    }

    /// Records the host's API for log forwarding.
    ///
    /// # Safety
    /// `host` is null or points to a `HostApi` that lives for the rest of
    /// the process (the ABI's ownership rule).
    pub unsafe fn init_host(host: *const HostApi) {
        if host.is_null() {
            return;
        }
        // SAFETY: non-null and 'static per this function's contract; we read
        // only `struct_size`, which every version of the struct has first.
        let size = unsafe { (*host).struct_size } as usize;
        if size < std::mem::offset_of!(HostApi, log) + size_of::<usize>() {
            return;
        }
        HOST.store(host.cast_mut(), Ordering::Release);
        static LOGGER: HostLogger = HostLogger;
        if log::set_logger(&LOGGER).is_ok() {
            // Debug and above cross the boundary; the host filters by its own
            // verbosity. Trace stays inside (HTTP stacks trace every byte).
            log::set_max_level(log::LevelFilter::Debug);
        }
    }
}

/// Owns a [`Completion`] and calls it exactly once: explicitly, or on drop
/// with [`STATUS_PANICKED`] if the code that should have called it unwound.
struct CompletionGuard(Option<Completion>);

// SAFETY: the ABI allows `done` to be called from any thread, and `ctx` is an
// opaque value the host created for exactly this purpose.
unsafe impl Send for CompletionGuard {}

impl CompletionGuard {
    fn complete(mut self, status: u32, body: &[u8]) {
        if let Some(c) = self.0.take() {
            // SAFETY: the host gave us this completion and requires exactly
            // one call; `take()` guarantees at most one, the Drop impl at
            // least one. `body` outlives the call.
            unsafe { (c.done)(c.ctx, status, Bytes::from_slice(body)) }
        }
    }
}

impl Drop for CompletionGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            let body = error_json(&ErrorBody::internal(
                "the plugin lost an operation without completing it",
            ));
            // SAFETY: as in `complete`; this is the one call.
            unsafe { (c.done)(c.ctx, STATUS_PANICKED, Bytes::from_slice(&body)) }
        }
    }
}

fn error_json(e: &ErrorBody) -> Vec<u8> {
    // Serializing a struct of strings, bools and integers cannot fail.
    serde_json::to_vec(e).unwrap_or_else(|_| br#"{"kind":"internal","message":"?"}"#.to_vec())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

struct Instance<S> {
    solver: Arc<S>,
    ops: Mutex<HashMap<u64, tokio::task::AbortHandle>>,
    next_op: AtomicU64,
}

impl<S> Instance<S> {
    fn ops(&self) -> std::sync::MutexGuard<'_, HashMap<u64, tokio::task::AbortHandle>> {
        // A poisoned map only means a panic happened while it was held; the
        // map itself is still consistent (insert/remove are atomic).
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Failure {
    Error(ErrorBody),
    Unsupported,
}

fn invalid_params(e: serde_json::Error) -> Failure {
    Failure::Error(ErrorBody::internal(format!(
        "the host sent parameters this plugin cannot read: {e}"
    )))
}

async fn with_deadline<T>(
    deadline: Deadline,
    fut: impl Future<Output = Result<T, PluginError>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(deadline.remaining(), fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::Error(e)),
        Err(_) => Err(Failure::Error(ErrorBody::transient(
            "the operation did not finish before its deadline",
        ))),
    }
}

async fn run_method<S: Solver>(
    solver: Arc<S>,
    method: String,
    params: Vec<u8>,
) -> Result<serde_json::Value, Failure> {
    match method.as_str() {
        METHOD_PRESENT => {
            let req: ChallengeRequest = serde_json::from_slice(&params).map_err(invalid_params)?;
            let p = with_deadline(req.deadline(), solver.present(&req)).await?;
            serde_json::to_value(p)
                .map_err(|e| Failure::Error(ErrorBody::internal(format!("bad result: {e}"))))
        }
        METHOD_CLEANUP => {
            let p: CleanupParams = serde_json::from_slice(&params).map_err(invalid_params)?;
            with_deadline(
                p.request.deadline(),
                solver.cleanup(&p.request, &p.presented),
            )
            .await?;
            Ok(serde_json::json!({}))
        }
        METHOD_CHECK_CREDENTIALS => {
            let req: CredentialsCheck = serde_json::from_slice(&params).map_err(invalid_params)?;
            let checked = match tokio::time::timeout(
                req.deadline().remaining(),
                solver.check_credentials(&req),
            )
            .await
            {
                Ok(None) => return Err(Failure::Unsupported),
                Ok(Some(r)) => r.map_err(Failure::Error)?,
                Err(_) => {
                    return Err(Failure::Error(ErrorBody::transient(
                        "the credentials check did not finish before its deadline",
                    )));
                }
            };
            serde_json::to_value(checked)
                .map_err(|e| Failure::Error(ErrorBody::internal(format!("bad result: {e}"))))
        }
        _ => Err(Failure::Unsupported),
    }
}

unsafe extern "C" fn create<S: Solver>(config_json: Bytes, on_error: Completion) -> *mut c_void {
    let guard = CompletionGuard(Some(on_error));
    // SAFETY: the host lends `config_json` for this call (ABI ownership rule).
    let config = unsafe { config_json.as_slice() }.to_vec();
    let built = catch_unwind(AssertUnwindSafe(|| {
        let _rt = runtime().enter();
        let cfg: S::Config = serde_json::from_slice(&config)
            .map_err(|e| ErrorBody::config(format!("invalid configuration: {e}")))?;
        S::new(cfg)
    }));
    match built {
        Ok(Ok(solver)) => {
            // Success: the completion must not be called. Forget the guard's
            // content rather than letting Drop report a lost operation.
            let mut guard = guard;
            guard.0 = None;
            let inst = Arc::new(Instance {
                solver: Arc::new(solver),
                ops: Mutex::new(HashMap::new()),
                next_op: AtomicU64::new(1),
            });
            Arc::into_raw(inst) as *mut c_void
        }
        Ok(Err(e)) => {
            guard.complete(STATUS_ERROR, &error_json(&e));
            std::ptr::null_mut()
        }
        Err(panic) => {
            // The host adds "panicked"; the body carries the message only.
            let e = ErrorBody::internal(panic_message(&*panic));
            guard.complete(STATUS_PANICKED, &error_json(&e));
            std::ptr::null_mut()
        }
    }
}

unsafe extern "C" fn destroy<S: Solver>(inst: *mut c_void) {
    if inst.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `inst` came from `Arc::into_raw` in `create` and the host
        // calls destroy once; this releases the host's reference. Tasks still
        // running hold their own references.
        let inst = unsafe { Arc::from_raw(inst as *const Instance<S>) };
        for (_, op) in inst.ops().drain() {
            op.abort();
        }
    }));
}

unsafe extern "C" fn invoke<S: Solver>(
    inst: *mut c_void,
    method: Bytes,
    params_json: Bytes,
    done: Completion,
) -> u64 {
    let guard = CompletionGuard(Some(done));
    if inst.is_null() {
        let e = ErrorBody::internal("invoke on a null instance");
        guard.complete(STATUS_ERROR, &error_json(&e));
        return 0;
    }
    // SAFETY: both are lent by the host for this call; we copy them.
    let method = String::from_utf8_lossy(unsafe { method.as_slice() }).into_owned();
    // SAFETY: as above.
    let params = unsafe { params_json.as_slice() }.to_vec();
    // SAFETY: `inst` came from `Arc::into_raw` in `create` and the host has
    // not destroyed it (it must not invoke after destroy). We take a new
    // strong reference for the tasks below.
    let inst: Arc<Instance<S>> = unsafe {
        Arc::increment_strong_count(inst as *const Instance<S>);
        Arc::from_raw(inst as *const Instance<S>)
    };
    let started = catch_unwind(AssertUnwindSafe(move || {
        let rt = runtime();
        let op_id = inst.next_op.fetch_add(1, Ordering::Relaxed);
        let work = rt.spawn(run_method(inst.solver.clone(), method, params));
        // Inserted before the watcher is spawned, so the watcher's removal
        // always comes after this insertion.
        inst.ops().insert(op_id, work.abort_handle());
        rt.spawn(async move {
            let outcome = work.await;
            inst.ops().remove(&op_id);
            match outcome {
                Ok(Ok(value)) => {
                    let body = serde_json::to_vec(&value).unwrap_or_default();
                    guard.complete(STATUS_OK, &body);
                }
                Ok(Err(Failure::Error(e))) => guard.complete(STATUS_ERROR, &error_json(&e)),
                Ok(Err(Failure::Unsupported)) => guard.complete(STATUS_UNSUPPORTED, b""),
                Err(join) if join.is_panic() => {
                    let e = ErrorBody::internal(panic_message(&*join.into_panic()));
                    guard.complete(STATUS_PANICKED, &error_json(&e));
                }
                Err(_) => guard.complete(STATUS_CANCELLED, b""),
            }
        });
        op_id
    }));
    // On a panic here the guard was dropped during unwinding and has reported
    // PANICKED to the host already.
    started.unwrap_or(0)
}

unsafe extern "C" fn cancel<S: Solver>(inst: *mut c_void, op_id: u64) {
    if inst.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `inst` is a live instance from `create` (the host must not
        // cancel after destroy); we only borrow it for this call.
        let inst = unsafe { &*(inst as *const Instance<S>) };
        if let Some(op) = inst.ops().get(&op_id) {
            op.abort();
        }
    }));
}

/// Exports a [`Solver`] implementation as a certsmith plugin.
///
/// ```text
/// certsmith_plugin_api::export_solver!(MySolver, manifest = include_str!("../plugin.toml"));
/// ```
///
/// This defines the one exported symbol, `certsmith_solver_plugin_v1`, and
/// the static header and vtable it returns. Build the crate as a `cdylib`.
#[macro_export]
macro_rules! export_solver {
    ($ty:ty, manifest = $manifest:expr $(,)?) => {
        /// The certsmith plugin entry point (ABI v1).
        ///
        /// # Safety
        /// `host` is null or a `HostApi` that lives for the rest of the process.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn certsmith_solver_plugin_v1(
            host: *const $crate::abi::HostApi,
        ) -> *const $crate::abi::PluginHeader {
            static VTABLE: $crate::sdk::__private::SyncVTable =
                $crate::sdk::__private::SyncVTable($crate::sdk::__private::vtable::<$ty>());
            static MANIFEST: &str = $manifest;
            static HEADER: $crate::sdk::__private::SyncHeader =
                $crate::sdk::__private::SyncHeader($crate::abi::PluginHeader {
                    magic: $crate::abi::MAGIC,
                    abi_major: $crate::abi::ABI_MAJOR,
                    abi_minor: $crate::abi::ABI_MINOR,
                    struct_size: ::core::mem::size_of::<$crate::abi::PluginHeader>() as u32,
                    flags: $crate::sdk::__private::flags(),
                    reserved: 0,
                    manifest_toml: $crate::abi::Bytes::from_slice(MANIFEST.as_bytes()),
                    vtable: &VTABLE.0,
                });
            // SAFETY: forwarded from our own caller's contract.
            unsafe { $crate::sdk::__private::init_host(host) };
            &HEADER.0
        }
    };
}
