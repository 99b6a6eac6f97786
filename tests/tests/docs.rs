//! `docs/solvers/<code>.md` is generated from each plugin's `plugin.toml`;
//! this test fails when a page is stale or missing, and rewrites them all
//! when run with `CERTSMITH_BLESS=1`.

use std::path::{Path, PathBuf};

use certsmith_plugin_api::Manifest;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifests() -> Vec<(PathBuf, Manifest)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("solvers"))
        .expect("solvers/ exists")
        .filter_map(Result::ok)
        .map(|e| e.path().join("plugin.toml"))
        .filter(|p| p.exists())
        .collect();
    files.push(root().join("plugins-example/plugin.toml"));
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read plugin.toml");
            let m = Manifest::parse(&text)
                .unwrap_or_else(|e| panic!("{} is invalid: {e}", p.display()));
            (p, m)
        })
        .collect()
}

#[test]
fn solver_docs_match_their_manifests() {
    let bless = std::env::var_os("CERTSMITH_BLESS").is_some();
    let docs = root().join("docs/solvers");
    let all = manifests();
    assert!(
        all.len() >= 3,
        "expected the workspace's plugins, found {}",
        all.len()
    );
    let mut stale = Vec::new();
    for (path, m) in &all {
        let page = docs.join(format!("{}.md", m.code));
        let want = m.to_markdown();
        if bless {
            std::fs::create_dir_all(&docs).expect("mkdir docs/solvers");
            std::fs::write(&page, &want).expect("write page");
            continue;
        }
        let have = std::fs::read_to_string(&page).unwrap_or_default();
        if have != want {
            stale.push(format!("{} (from {})", page.display(), path.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "stale solver docs: {}\nregenerate: CERTSMITH_BLESS=1 cargo test -p certsmith-tests --test e2e docs",
        stale.join(", ")
    );

    // The README links every page.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap_or_default();
    for (_, m) in &all {
        let link = format!("docs/solvers/{}.md", m.code);
        assert!(readme.contains(&link), "README.md does not link {link}");
    }
}
