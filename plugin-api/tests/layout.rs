//! The ABI v1 layout, frozen. `abi.rs` asserts offsets at compile time; this
//! test compares the whole description with a golden file so that any change
//! shows up as a readable diff and needs a deliberate edit of the golden file
//! (which a reviewer will question: v1 may only grow at the end).

#[test]
#[cfg(target_pointer_width = "64")]
fn abi_v1_layout_matches_golden_file() {
    let golden = include_str!("abi-v1-layout.golden");
    let now = certsmith_plugin_api::abi::layout_description();
    assert_eq!(
        now, golden,
        "the C ABI layout changed; this breaks every plugin already built.\n\
         If the change only appends fields at the end of a struct, update tests/abi-v1-layout.golden."
    );
}
