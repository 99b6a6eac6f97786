//! Test plugin: ABI major version 2 behind the v1 symbol.
#![allow(dead_code)]
include!("../raw_common.rs");
raw_plugin!(
    magic = *b"CSMPLUG\0",
    abi_major = 2,
    struct_size = std::mem::size_of::<PluginHeader>() as u32,
    manifest =
        "code = \"rawtest\"\nname = \"raw\"\nversion = \"0\"\nchallenge_types = [\"http-01\"]\n"
);
