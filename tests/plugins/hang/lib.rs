//! Test plugin: accepts calls and never completes them.
#![allow(dead_code)]
include!("../raw_common.rs");
raw_plugin!(
    magic = *b"CSMPLUG\0",
    abi_major = 1,
    struct_size = std::mem::size_of::<PluginHeader>() as u32,
    manifest =
        "code = \"hang\"\nname = \"Hang\"\nversion = \"0\"\nchallenge_types = [\"http-01\"]\n"
);
