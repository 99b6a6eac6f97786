//! The C ABI, version 1: the only thing that crosses a plugin boundary.
//!
//! Why plain C and not Rust types: Rust has no stable ABI. A `Vec`, a trait
//! object or a tokio handle built by rustc 1.95 may have a different layout
//! in a host built by rustc 1.99, and tokio's statics are duplicated per
//! dynamic library anyway. Every type here is `#[repr(C)]`, holds only
//! integers, raw pointers and `extern "C"` function pointers, and starts
//! with its own size so that it can grow at the end without breaking old
//! readers.
//!
//! # Ownership rules
//!
//! * [`Bytes`] passed **into** a function are borrowed for the duration of
//!   that call only. The callee copies what it wants to keep.
//! * [`Bytes`] passed to [`Completion::done`] exist only during that call.
//!   The receiver (the host) copies them before returning.
//! * Nothing is freed across the boundary: each side frees only what it
//!   allocated.
//! * [`PluginHeader`], its manifest bytes and its [`SolverVTable`] are owned
//!   by the plugin and live for the life of the process: libraries are never
//!   unloaded, because `dlclose` combined with thread-local destructors
//!   crashes Rust libraries.
//! * [`HostApi`] is owned by the host and lives for the life of the process.
//! * A [`Completion`] is called **exactly once**, from any thread, for every
//!   `invoke` (including one that is cancelled: then with
//!   [`STATUS_CANCELLED`]).
//!
//! # Evolution
//!
//! Structs only grow at the end; a reader reads only the fields that the
//! `struct_size` written by the other side covers. New capabilities are new
//! method names or new JSON fields with defaults, never new meanings for old
//! ones. A breaking change is a new entry symbol (`..._v2`).

use std::ffi::c_void;
use std::mem::{offset_of, size_of};

/// Name of the one symbol a plugin exports. The ABI major version is part of
/// the name, so a host probes the newest one it knows first.
pub const ENTRY_SYMBOL_V1: &str = "certsmith_solver_plugin_v1";

/// [`PluginHeader::magic`]: identifies a certsmith plugin.
pub const MAGIC: [u8; 8] = *b"CSMPLUG\0";

/// The ABI major version this crate implements.
pub const ABI_MAJOR: u16 = 1;
/// The ABI minor version this crate implements (additions only).
///
/// A plugin's header carries the minor of the crate it was built with; a
/// host refuses a plugin whose minor is newer than its own (the plugin may
/// rely on what that minor added), and loads every older one.
///
/// * 1.0: the first release.
/// * 1.1: manifest keys `min`, `max` and `pattern`, enforced by the host;
///   the host serializes `present`/`cleanup` at one (solver, name) across
///   processes sharing a state directory.
/// * 1.2: the optional method `check_credentials`
///   ([`METHOD_CHECK_CREDENTIALS`](crate::wire::METHOD_CHECK_CREDENTIALS)),
///   asked by `certsmith doctor`; a plugin without it answers
///   [`STATUS_UNSUPPORTED`] (the SDK's default), and the host does not
///   ask plugins built for an older minor at all.
/// * 1.3: [`HostApi::http`]: the host sends HTTP requests for its plugins
///   with its own client (connection pool, TLS stack, trust roots), so a
///   provider plugin carries no HTTP client or TLS library of its own
///   ([`sdk::HttpRequest`](crate::sdk::HttpRequest)). Plugins built for
///   1.0-1.2 keep their own clients and keep loading.
pub const ABI_MINOR: u16 = 3;

/// [`PluginHeader::flags`] bit 0: the plugin was built with `panic = "unwind"`,
/// so the SDK can turn panics into [`STATUS_PANICKED`]. A plugin built with
/// `panic = "abort"` would take the whole host down on its first panic and is
/// refused at load.
pub const FLAG_PANIC_UNWIND: u32 = 1;

/// The call succeeded; the body is the method's JSON result.
pub const STATUS_OK: u32 = 0;
/// The call failed; the body is a JSON [`ErrorBody`](crate::ErrorBody).
pub const STATUS_ERROR: u32 = 1;
/// The plugin panicked; the body is a JSON error body carrying the panic message.
pub const STATUS_PANICKED: u32 = 2;
/// The operation was cancelled by the host; the body may be empty.
pub const STATUS_CANCELLED: u32 = 3;
/// The plugin does not implement the method; the body may be empty.
pub const STATUS_UNSUPPORTED: u32 = 4;

/// [`HostApi::log`] level: error.
pub const LOG_ERROR: u32 = 1;
/// [`HostApi::log`] level: warning.
pub const LOG_WARN: u32 = 2;
/// [`HostApi::log`] level: information.
pub const LOG_INFO: u32 = 3;
/// [`HostApi::log`] level: debug.
pub const LOG_DEBUG: u32 = 4;
/// [`HostApi::log`] level: trace.
pub const LOG_TRACE: u32 = 5;

/// A borrowed byte slice (UTF-8 JSON or TOML unless said otherwise).
///
/// See the module docs for how long the bytes stay valid.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Bytes {
    /// Start of the bytes; may be dangling or null when `len` is 0.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl Bytes {
    /// An empty slice.
    pub const EMPTY: Bytes = Bytes {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// Borrows a Rust slice. The result is valid only as long as `s` is.
    pub const fn from_slice(s: &[u8]) -> Bytes {
        Bytes {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// Views the bytes as a slice.
    ///
    /// # Safety
    /// `ptr` must point to `len` initialized bytes that stay valid and
    /// unmodified for the lifetime `'a` chosen by the caller, or `len` must be 0.
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        if self.len == 0 || self.ptr.is_null() {
            &[]
        } else {
            // SAFETY: the caller guarantees `ptr..ptr+len` is valid for 'a.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// A one-shot callback: `done(ctx, status, body)` is called exactly once.
///
/// `ctx` belongs to whoever created the completion (the host for `invoke`);
/// the other side only passes it back.
#[repr(C)]
#[derive(Debug)]
pub struct Completion {
    /// Opaque context handed back to `done`.
    pub ctx: *mut c_void,
    /// Called exactly once, from any thread, with a `STATUS_*` code and a
    /// body valid only during the call.
    pub done: unsafe extern "C" fn(ctx: *mut c_void, status: u32, body: Bytes),
}

/// Services the host offers to plugins. Host-owned, `'static`.
#[repr(C)]
#[derive(Debug)]
pub struct HostApi {
    /// `size_of::<HostApi>()` as the host was built.
    pub struct_size: u32,
    /// The host's ABI minor version.
    pub abi_minor: u16,
    /// Reserved, zero.
    pub reserved: u16,
    /// Log a message. `level` is one of the `LOG_*` constants; `target` and
    /// `msg` are UTF-8 and borrowed for the call. May be called from any thread.
    pub log: unsafe extern "C" fn(level: u32, target: Bytes, msg: Bytes),
    /// ABI 1.3: sends one HTTP request with the host's client and returns at
    /// once; `done` is called exactly once, from any thread, when it ends.
    ///
    /// `head` is a JSON [`HttpRequestHead`](crate::wire::HttpRequestHead),
    /// `body` the request body; both are borrowed for the call. On an answer
    /// (any HTTP status) `done` gets [`STATUS_OK`] and a JSON
    /// [`HttpResponseHead`](crate::wire::HttpResponseHead), one zero byte
    /// (JSON text never contains one) and the response body. When no answer
    /// came (no connection, timeout, a bad URL) it gets [`STATUS_ERROR`] and
    /// a JSON error body.
    ///
    /// Present only when `struct_size` covers it and it is not null. There is
    /// no cancel: a caller that stops waiting lets `done` arrive later (the
    /// request's `timeout_ms` bounds how much later) and ignores it.
    pub http: Option<unsafe extern "C" fn(head: Bytes, body: Bytes, done: Completion)>,
}

/// What a plugin's entry function returns. Plugin-owned, `'static`.
#[repr(C)]
#[derive(Debug)]
pub struct PluginHeader {
    /// Always [`MAGIC`].
    pub magic: [u8; 8],
    /// [`ABI_MAJOR`] as the plugin was built.
    pub abi_major: u16,
    /// [`ABI_MINOR`] as the plugin was built.
    pub abi_minor: u16,
    /// `size_of::<PluginHeader>()` as the plugin was built.
    pub struct_size: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Reserved, zero (keeps the layout free of implicit padding).
    pub reserved: u32,
    /// The plugin's `plugin.toml`, UTF-8.
    pub manifest_toml: Bytes,
    /// The plugin's functions.
    pub vtable: *const SolverVTable,
}

/// The functions of a solver plugin. Plugin-owned, `'static`.
#[repr(C)]
#[derive(Debug)]
pub struct SolverVTable {
    /// `size_of::<SolverVTable>()` as the plugin was built.
    pub struct_size: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Creates an instance from a JSON config object. Returns a non-null
    /// instance on success. On failure returns null **and** calls `on_error`
    /// (exactly once, before returning) with a status and a JSON error body;
    /// on success `on_error` is never called.
    pub create: unsafe extern "C" fn(config_json: Bytes, on_error: Completion) -> *mut c_void,
    /// Destroys an instance. Operations still running are cancelled and
    /// their completions still called.
    pub destroy: unsafe extern "C" fn(inst: *mut c_void),
    /// Starts `method` with JSON `params` and returns at once with an
    /// operation id; `done` is called exactly once when it ends.
    pub invoke: unsafe extern "C" fn(
        inst: *mut c_void,
        method: Bytes,
        params_json: Bytes,
        done: Completion,
    ) -> u64,
    /// Asks the plugin to cancel an operation. Unknown or finished ids are
    /// ignored. The operation's completion is still called.
    pub cancel: unsafe extern "C" fn(inst: *mut c_void, op_id: u64),
}

/// The signature of [`ENTRY_SYMBOL_V1`].
pub type EntryV1 = unsafe extern "C" fn(host: *const HostApi) -> *const PluginHeader;

// ---- Layout guards -------------------------------------------------------
//
// These fail the build when a field moves. The numbers are for 64-bit
// targets, the only ones certsmith ships for; on 32-bit ones the pointer
// sized fields shrink and the guard is skipped.

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<Bytes>() == 16);
    assert!(offset_of!(Bytes, ptr) == 0);
    assert!(offset_of!(Bytes, len) == 8);

    assert!(size_of::<Completion>() == 16);
    assert!(offset_of!(Completion, ctx) == 0);
    assert!(offset_of!(Completion, done) == 8);

    assert!(size_of::<HostApi>() == 24);
    assert!(offset_of!(HostApi, struct_size) == 0);
    assert!(offset_of!(HostApi, abi_minor) == 4);
    assert!(offset_of!(HostApi, reserved) == 6);
    assert!(offset_of!(HostApi, log) == 8);
    assert!(offset_of!(HostApi, http) == 16);

    assert!(size_of::<PluginHeader>() == 48);
    assert!(offset_of!(PluginHeader, magic) == 0);
    assert!(offset_of!(PluginHeader, abi_major) == 8);
    assert!(offset_of!(PluginHeader, abi_minor) == 10);
    assert!(offset_of!(PluginHeader, struct_size) == 12);
    assert!(offset_of!(PluginHeader, flags) == 16);
    assert!(offset_of!(PluginHeader, reserved) == 20);
    assert!(offset_of!(PluginHeader, manifest_toml) == 24);
    assert!(offset_of!(PluginHeader, vtable) == 40);

    assert!(size_of::<SolverVTable>() == 40);
    assert!(offset_of!(SolverVTable, struct_size) == 0);
    assert!(offset_of!(SolverVTable, reserved) == 4);
    assert!(offset_of!(SolverVTable, create) == 8);
    assert!(offset_of!(SolverVTable, destroy) == 16);
    assert!(offset_of!(SolverVTable, invoke) == 24);
    assert!(offset_of!(SolverVTable, cancel) == 32);
};

/// A textual description of every v1 struct's layout, compared against a
/// golden file in the tests so that a change shows up as a readable diff.
pub fn layout_description() -> String {
    macro_rules! fields {
        ($out:ident, $ty:ty, $($f:ident),*) => {{
            $out.push_str(&format!("{} size={} align={}\n", stringify!($ty), size_of::<$ty>(), std::mem::align_of::<$ty>()));
            $( $out.push_str(&format!("  {} @{}\n", stringify!($f), offset_of!($ty, $f))); )*
        }};
    }
    let mut out = String::new();
    fields!(out, Bytes, ptr, len);
    fields!(out, Completion, ctx, done);
    fields!(out, HostApi, struct_size, abi_minor, reserved, log, http);
    fields!(
        out,
        PluginHeader,
        magic,
        abi_major,
        abi_minor,
        struct_size,
        flags,
        reserved,
        manifest_toml,
        vtable
    );
    fields!(
        out,
        SolverVTable,
        struct_size,
        reserved,
        create,
        destroy,
        invoke,
        cancel
    );
    out.push_str(&format!(
        "entry={ENTRY_SYMBOL_V1} magic={MAGIC:?} abi={ABI_MAJOR}.{ABI_MINOR}\n"
    ));
    out.push_str(&format!(
        "status ok={STATUS_OK} error={STATUS_ERROR} panicked={STATUS_PANICKED} cancelled={STATUS_CANCELLED} unsupported={STATUS_UNSUPPORTED}\n"
    ));
    out
}
