//! Test plugin: a header with the wrong magic bytes.
#![allow(dead_code)]
include!("../raw_common.rs");
raw_plugin!(
    magic = *b"NOTAPLUG",
    abi_major = 1,
    struct_size = std::mem::size_of::<PluginHeader>() as u32,
    manifest =
        "code = \"rawtest\"\nname = \"raw\"\nversion = \"0\"\nchallenge_types = [\"http-01\"]\n"
);
