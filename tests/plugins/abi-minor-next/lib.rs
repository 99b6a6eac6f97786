//! Test plugin: a valid v1 header declaring the ABI minor after the one the
//! host implements, which the host must refuse naming both versions.
#![allow(dead_code)]
include!("../raw_common.rs");
raw_plugin!(
    magic = *b"CSMPLUG\0",
    abi_major = 1,
    abi_minor = certsmith_plugin_api_abi_minor() + 1,
    struct_size = std::mem::size_of::<PluginHeader>() as u32,
    manifest =
        "code = \"rawtest\"\nname = \"raw\"\nversion = \"0\"\nchallenge_types = [\"http-01\"]\n"
);

/// The host's ABI minor, without depending on the crate (a raw plugin):
/// kept equal to `certsmith_plugin_api::abi::ABI_MINOR` by the e2e test,
/// which expects exactly one more.
const fn certsmith_plugin_api_abi_minor() -> u16 {
    3
}
