//! Test plugin: a correct v1 header, built with `panic = "abort"`, so its
//! header's panic-unwind flag is clear. The host must refuse it.
#![allow(dead_code)]
include!("../raw_common.rs");
raw_plugin!(magic = *b"CSMPLUG\0", abi_major = 1, struct_size = std::mem::size_of::<PluginHeader>() as u32, manifest = "code = \"abort\"\nname = \"Abort\"\nversion = \"0\"\nchallenge_types = [\"http-01\"]\n");
