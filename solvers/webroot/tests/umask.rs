//! The file and directory modes do not depend on the umask. In a test binary
//! of its own: the umask is per process and would leak into other tests.

mod common;

use certsmith_plugin_api::{Presented, Solver};
use common::{challenge_dir, mode, request, solver, well_known};

#[tokio::test]
async fn modes_hold_under_umask_077() {
    // SAFETY: umask only swaps the process's file-creation mask; it has no
    // memory-safety preconditions. Nothing else in this binary creates files
    // concurrently with a different expectation.
    unsafe {
        libc::umask(0o077);
    }
    let root = tempfile::tempdir().expect("tempdir");
    let s = solver(root.path());
    let req = request("umaskToken");
    s.present(&req).await.expect("present");

    let file = challenge_dir(root.path()).join("umaskToken");
    assert_eq!(mode(&file), 0o644, "file mode");
    assert_eq!(
        mode(&challenge_dir(root.path())),
        0o755,
        "acme-challenge mode"
    );
    assert_eq!(mode(&well_known(root.path())), 0o755, ".well-known mode");
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        req.key_authorization
    );

    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup");
    assert!(!well_known(root.path()).exists());
}
