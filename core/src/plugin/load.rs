//! Loading one library and the ABI v1 handshake.
//!
//! The order of checks matters: everything that can be decided from the file
//! (ownership, permissions, the sha256 pin) is decided *before* `dlopen`,
//! because loading a library already runs its constructors. The file is
//! opened once and everything, including `dlopen`, goes through that one open
//! descriptor (`/proc/self/fd/N`), so the bytes hashed are the bytes loaded.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use certsmith_plugin_api::Manifest;
use certsmith_plugin_api::abi::{
    ABI_MAJOR, ABI_MINOR, Bytes, ENTRY_SYMBOL_V1, EntryV1, FLAG_PANIC_UNWIND, HostApi, LOG_DEBUG,
    LOG_ERROR, LOG_INFO, LOG_WARN, MAGIC, PluginHeader, SolverVTable,
};

use super::config::redact_global;
use super::error::PluginHostError;

/// What the loader accepts beyond the ABI checks.
#[derive(Clone, Debug, Default)]
pub struct LoadPolicy {
    /// Expected SHA-256 (lowercase hex) per plugin file name
    /// (e.g. `libcertsmith_cloudflare.so`) or full path.
    pub pins: BTreeMap<String, String>,
}

impl LoadPolicy {
    fn pin_for(&self, path: &Path) -> Option<&String> {
        let by_path = self.pins.get(&path.display().to_string());
        let by_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| self.pins.get(n));
        by_path.or(by_name)
    }
}

/// A library that passed the handshake. It stays loaded for the life of the
/// process.
#[derive(Debug)]
pub struct LoadedPlugin {
    path: PathBuf,
    manifest: Manifest,
    abi_minor: u16,
    /// Computed when a pin asks for it, else on first use: hashing every
    /// library on the search path would dominate start-up.
    sha256: std::sync::OnceLock<String>,
    /// The descriptor the library was loaded through (kept open for life).
    fd: std::os::unix::io::RawFd,
    pub(super) vtable: &'static SolverVTable,
}

impl LoadedPlugin {
    /// The library file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Its parsed `plugin.toml`.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// The ABI minor version it was built for (what it may implement).
    pub fn abi_minor(&self) -> u16 {
        self.abi_minor
    }
    /// `major.minor` of the ABI it was built for.
    pub fn abi_version(&self) -> String {
        format!("{ABI_MAJOR}.{}", self.abi_minor)
    }
    /// SHA-256 of the loaded file, lowercase hex (what a pin must say).
    /// Read through the descriptor it was loaded from, so it describes the
    /// bytes in memory even if the file was replaced since.
    pub fn sha256(&self) -> &str {
        self.sha256.get_or_init(|| {
            std::fs::File::open(format!("/proc/self/fd/{}", self.fd))
                .map_err(|source| PluginHostError::Io {
                    path: self.path.clone(),
                    source,
                })
                .and_then(|mut f| sha256_hex(&self.path, &mut f))
                .unwrap_or_else(|e| format!("unknown ({e})"))
        })
    }
}

/// The host's services, handed to every plugin. Lives for the whole process,
/// as the ABI requires.
static HOST_API: HostApi = HostApi {
    struct_size: size_of::<HostApi>() as u32,
    abi_minor: ABI_MINOR,
    reserved: 0,
    log: host_log,
    http: Some(super::http::host_http),
};

/// The services this host gives its plugins: what a test hands
/// `certsmith_plugin_api::sdk::attach_host` to call a solver in-process
/// with the host's HTTP client.
pub fn host_api() -> &'static HostApi {
    &HOST_API
}

/// Plugin log records arrive here, from any of the plugin's threads.
unsafe extern "C" fn host_log(level: u32, target: Bytes, msg: Bytes) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: the ABI lends both slices for the duration of this call.
        let (target, msg) = unsafe { (target.as_slice(), msg.as_slice()) };
        let target = String::from_utf8_lossy(target);
        let msg = redact_global(&String::from_utf8_lossy(msg));
        let level = match level {
            LOG_ERROR => log::Level::Error,
            LOG_WARN => log::Level::Warn,
            LOG_INFO => log::Level::Info,
            LOG_DEBUG => log::Level::Debug,
            _ => log::Level::Trace,
        };
        log::log!(target: "certsmith::plugin", level, "[{target}] {msg}");
    });
}

fn check_file_policy(path: &Path, file: &File) -> Result<(), PluginHostError> {
    let meta = file.metadata().map_err(|source| PluginHostError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(PluginHostError::Insecure {
            path: path.to_owned(),
            what: "the file",
            mode,
            fix: path.to_owned(),
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(PluginHostError::ForeignOwner {
            path: path.to_owned(),
            uid: meta.uid(),
        });
    }
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(dmeta) = std::fs::metadata(dir) {
            let dmode = dmeta.mode() & 0o7777;
            if dmode & 0o022 != 0 {
                return Err(PluginHostError::Insecure {
                    path: path.to_owned(),
                    what: "its directory",
                    mode: dmode,
                    fix: dir.to_owned(),
                });
            }
        }
    }
    Ok(())
}

fn sha256_hex(path: &Path, file: &mut File) -> Result<String, PluginHostError> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|source| PluginHostError::Io {
            path: path.to_owned(),
            source,
        })?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Loads one plugin file: policy checks, `dlopen`, handshake, manifest.
pub fn load_plugin(path: &Path, policy: &LoadPolicy) -> Result<LoadedPlugin, PluginHostError> {
    let mut file = File::open(path).map_err(|source| PluginHostError::Io {
        path: path.to_owned(),
        source,
    })?;
    check_file_policy(path, &file)?;
    let sha256 = std::sync::OnceLock::new();
    if let Some(expected) = policy.pin_for(path) {
        let actual = sha256_hex(path, &mut file)?;
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(PluginHostError::PinMismatch {
                path: path.to_owned(),
                expected: expected.clone(),
                actual,
            });
        }
        let _ = sha256.set(actual);
    }

    let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    // SAFETY: loading a library runs its initializers. We accept that for a
    // file that passed the ownership, permission and pin checks above; the
    // descriptor path guarantees it is the same file that was checked.
    // RTLD_LOCAL keeps its symbols from interposing on ours or other plugins'.
    let lib = unsafe {
        libloading::os::unix::Library::open(
            Some(&fd_path),
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL,
        )
    }
    .map_err(|e| PluginHostError::Dlopen {
        path: path.to_owned(),
        reason: e.to_string().replace(&fd_path, &path.display().to_string()),
    })?;
    // The descriptor stays open for the life of the process, like the
    // library itself: the loader identifies libraries by name, and a closed
    // descriptor's number (hence `/proc/self/fd/N`) would be reused by the
    // next plugin, which `dlopen` would then take for this one.
    let fd = std::os::unix::io::IntoRawFd::into_raw_fd(file);

    let symbol = format!("{ENTRY_SYMBOL_V1}\0");
    // SAFETY: the symbol's type is fixed by ABI v1 (`EntryV1`). A library
    // that exports the name with another signature breaks the ABI contract;
    // we cannot detect that, as no C loader can.
    let entry: EntryV1 = match unsafe { lib.get::<EntryV1>(symbol.as_bytes()) } {
        Ok(sym) => *sym,
        Err(_) => {
            return Err(PluginHostError::NoEntry {
                path: path.to_owned(),
                symbol: ENTRY_SYMBOL_V1,
            });
        }
    };
    // Libraries are never unloaded: dlclose with live thread-local destructors
    // (tokio's worker threads) crashes Rust libraries. Forgetting the handle
    // keeps `entry` and everything the plugin hands us valid forever.
    std::mem::forget(lib);

    // SAFETY: `entry` is the v1 entry point; HOST_API is 'static as the ABI
    // requires.
    let header = unsafe { entry(&HOST_API) };
    // SAFETY: handshake reads of plugin-owned 'static memory, as documented
    // in `handshake`.
    let (manifest_text, abi_minor, vtable) = unsafe { handshake(path, header)? };
    let manifest = Manifest::parse(&manifest_text).map_err(|source| PluginHostError::Manifest {
        path: path.to_owned(),
        source,
    })?;
    Ok(LoadedPlugin {
        path: path.to_owned(),
        manifest,
        abi_minor,
        sha256,
        fd,
        vtable,
    })
}

/// Checks a header field by field, reading only what `struct_size` covers.
///
/// # Safety
/// `header` is null or points to memory the plugin keeps valid forever, at
/// least as large as the first fields of a `PluginHeader` (magic, version,
/// size), which every version of the ABI has.
unsafe fn handshake(
    path: &Path,
    header: *const PluginHeader,
) -> Result<(String, u16, &'static SolverVTable), PluginHostError> {
    let path_buf = || path.to_owned();
    if header.is_null() {
        return Err(PluginHostError::BadMagic { path: path_buf() });
    }
    // SAFETY: per this function's contract the first 16 bytes (magic,
    // abi_major, abi_minor, struct_size) are readable. Read unaligned: a
    // foreign plugin may not align its header.
    let magic = unsafe { std::ptr::read_unaligned(header.cast::<[u8; 8]>()) };
    if magic != MAGIC {
        return Err(PluginHostError::BadMagic { path: path_buf() });
    }
    // SAFETY: as above, within the first 16 bytes.
    let (abi_major, abi_minor, struct_size) = unsafe {
        (
            std::ptr::read_unaligned(std::ptr::addr_of!((*header).abi_major)),
            std::ptr::read_unaligned(std::ptr::addr_of!((*header).abi_minor)),
            std::ptr::read_unaligned(std::ptr::addr_of!((*header).struct_size)),
        )
    };
    if abi_major != ABI_MAJOR {
        return Err(PluginHostError::AbiMismatch {
            path: path_buf(),
            found: abi_major,
            supported: ABI_MAJOR,
        });
    }
    // Minors only add: a plugin built for an older one loads, one built for
    // a newer one may use what this host lacks (docs/design.md §2.5).
    if abi_minor > ABI_MINOR {
        return Err(PluginHostError::AbiTooNew {
            path: path_buf(),
            major: ABI_MAJOR,
            found: abi_minor,
            supported: ABI_MINOR,
        });
    }
    if (struct_size as usize) < size_of::<PluginHeader>() {
        return Err(PluginHostError::StructTooSmall {
            path: path_buf(),
            what: "PluginHeader",
            size: struct_size,
            need: size_of::<PluginHeader>(),
        });
    }
    // SAFETY: struct_size covers the whole v1 header, so every field below
    // is inside the plugin's 'static header.
    let (flags, manifest, vtable) = unsafe {
        let h = std::ptr::read_unaligned(header);
        (h.flags, h.manifest_toml, h.vtable)
    };
    if flags & FLAG_PANIC_UNWIND == 0 {
        return Err(PluginHostError::PanicAbort { path: path_buf() });
    }
    if vtable.is_null() {
        return Err(PluginHostError::StructTooSmall {
            path: path_buf(),
            what: "SolverVTable (null)",
            size: 0,
            need: size_of::<SolverVTable>(),
        });
    }
    // SAFETY: non-null, plugin-owned 'static; the first field of every
    // version of SolverVTable is its u32 size.
    let vt_size = unsafe { std::ptr::read_unaligned(vtable.cast::<u32>()) };
    if (vt_size as usize) < size_of::<SolverVTable>() {
        return Err(PluginHostError::StructTooSmall {
            path: path_buf(),
            what: "SolverVTable",
            size: vt_size,
            need: size_of::<SolverVTable>(),
        });
    }
    if !vtable.is_aligned() {
        return Err(PluginHostError::StructTooSmall {
            path: path_buf(),
            what: "SolverVTable (misaligned)",
            size: vt_size,
            need: size_of::<SolverVTable>(),
        });
    }
    // SAFETY: checked non-null, aligned, and at least v1-sized; the plugin
    // keeps it alive forever and we never unload it.
    let vtable: &'static SolverVTable = unsafe { &*vtable };
    // SAFETY: the manifest bytes are plugin-owned 'static data (ABI rule).
    let text = unsafe { manifest.as_slice() };
    let text = std::str::from_utf8(text)
        .map_err(|_| PluginHostError::ManifestNotUtf8 { path: path_buf() })?
        .to_owned();
    Ok((text, abi_minor, vtable))
}
