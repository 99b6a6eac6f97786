// A plugin written against the C ABI by hand, without certsmith-plugin-api,
// as a plugin in C or Zig would be. The test plugins under tests/plugins/
// include this file and set the header fields they want to get wrong, so the
// host's handshake checks are exercised against real shared libraries.
//
// Layouts mirror docs/design.md §2 / certsmith_plugin_api::abi, written out
// independently on purpose: if the crate's layout drifted, these plugins
// would stop loading and the tests would say so.

use std::ffi::c_void;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Bytes {
    pub ptr: *const u8,
    pub len: usize,
}

#[repr(C)]
pub struct Completion {
    pub ctx: *mut c_void,
    pub done: unsafe extern "C" fn(*mut c_void, u32, Bytes),
}

#[repr(C)]
pub struct HostApi {
    pub struct_size: u32,
    pub abi_minor: u16,
    pub reserved: u16,
    pub log: unsafe extern "C" fn(u32, Bytes, Bytes),
}

#[repr(C)]
pub struct PluginHeader {
    pub magic: [u8; 8],
    pub abi_major: u16,
    pub abi_minor: u16,
    pub struct_size: u32,
    pub flags: u32,
    pub reserved: u32,
    pub manifest_toml: Bytes,
    pub vtable: *const SolverVTable,
}

#[repr(C)]
pub struct SolverVTable {
    pub struct_size: u32,
    pub reserved: u32,
    pub create: unsafe extern "C" fn(Bytes, Completion) -> *mut c_void,
    pub destroy: unsafe extern "C" fn(*mut c_void),
    pub invoke: unsafe extern "C" fn(*mut c_void, Bytes, Bytes, Completion) -> u64,
    pub cancel: unsafe extern "C" fn(*mut c_void, u64),
}

struct Sync<T>(T);
// SAFETY: the wrapped header/vtable are immutable 'static data.
unsafe impl<T> std::marker::Sync for Sync<T> {}

unsafe extern "C" fn create(_config: Bytes, _on_error: Completion) -> *mut c_void {
    // Any non-null pointer: this plugin keeps no per-instance state.
    std::ptr::NonNull::<u8>::dangling().as_ptr().cast()
}

unsafe extern "C" fn destroy(_inst: *mut c_void) {}

/// Accepts every call and never completes it: models a plugin stuck on a
/// network call that ignores cancellation.
unsafe extern "C" fn invoke(_inst: *mut c_void, _m: Bytes, _p: Bytes, _done: Completion) -> u64 {
    7
}

unsafe extern "C" fn cancel(_inst: *mut c_void, _op: u64) {}

static VTABLE: Sync<SolverVTable> = Sync(SolverVTable {
    struct_size: std::mem::size_of::<SolverVTable>() as u32,
    reserved: 0,
    create,
    destroy,
    invoke,
    cancel,
});

const fn panic_flag() -> u32 {
    if cfg!(panic = "unwind") { 1 } else { 0 }
}

macro_rules! raw_plugin {
    (magic = $magic:expr, abi_major = $major:expr, struct_size = $size:expr, manifest = $manifest:expr) => {
        raw_plugin!(magic = $magic, abi_major = $major, abi_minor = 0, struct_size = $size, manifest = $manifest);
    };
    (magic = $magic:expr, abi_major = $major:expr, abi_minor = $minor:expr, struct_size = $size:expr, manifest = $manifest:expr) => {
        static MANIFEST: &str = $manifest;
        static HEADER: Sync<PluginHeader> = Sync(PluginHeader {
            magic: $magic,
            abi_major: $major,
            abi_minor: $minor,
            struct_size: $size,
            flags: panic_flag(),
            reserved: 0,
            manifest_toml: Bytes { ptr: MANIFEST.as_ptr(), len: MANIFEST.len() },
            vtable: &VTABLE.0,
        });

        /// The ABI v1 entry point.
        ///
        /// # Safety
        /// Called by the host with a 'static HostApi.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn certsmith_solver_plugin_v1(_host: *const HostApi) -> *const PluginHeader {
            &HEADER.0
        }
    };
}
