//! Test plugin: a header whose struct_size is too small for v1.
#![allow(dead_code)]
include!("../raw_common.rs");
raw_plugin!(
    magic = *b"CSMPLUG\0",
    abi_major = 1,
    struct_size = 16,
    manifest =
        "code = \"rawtest\"\nname = \"raw\"\nversion = \"0\"\nchallenge_types = [\"http-01\"]\n"
);
