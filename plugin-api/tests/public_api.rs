//! The public API snapshot: `api.txt` lists every `pub` item of `src/`
//! (signatures, fields, enum variants, `#[non_exhaustive]`) with the crate
//! version it belongs to. The test fails when the API changed and the
//! version in Cargo.toml did not; after a bump,
//! `CERTSMITH_BLESS=1 cargo test -p certsmith-plugin-api --test public_api`
//! records the new API.
//!
//! The listing is made from the source text, not from rustdoc: good enough
//! to catch an added, removed or changed `pub` item, field or variant,
//! which is what semver cares about here.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// One line per public item of one file.
fn items(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    let mut non_exhaustive = false;
    // Brace depth where a `pub enum` body starts, while inside one.
    let mut depth = 0i32;
    let mut enum_depth: Option<i32> = None;
    while i < lines.len() {
        let line = lines[i].trim();
        if line == "#[cfg(test)]" {
            break; // test modules come last and hold nothing public
        }
        if line.starts_with("//") {
            i += 1;
            continue;
        }
        if line == "#[non_exhaustive]" {
            non_exhaustive = true;
        } else if line.starts_with("pub ") || line.starts_with("pub(crate) ") {
            // Join a multi-line signature up to its body, `;` or `,`.
            let mut sig = String::new();
            let mut j = i;
            loop {
                let part = lines[j].trim();
                if !sig.is_empty() && !sig.ends_with('(') && !part.starts_with(')') {
                    sig.push(' ');
                }
                sig.push_str(part);
                let open = sig.matches(['(', '<', '[']).count() as i32
                    - sig.matches([')', '>', ']']).count() as i32
                    + sig.matches("->").count() as i32;
                let is_use = line.starts_with("pub use ");
                if (part.ends_with('{') && !is_use)
                    || part.ends_with(';')
                    || (part.ends_with(',') && open <= 0 && !is_use)
                    || j + 1 >= lines.len()
                {
                    break;
                }
                if part.ends_with('}') && part.contains('{') {
                    break;
                }
                j += 1;
            }
            let sig = sig
                .replace("{ ", "{")
                .replace(",)", ")")
                .replace(", }", "}");
            let sig = if line.starts_with("pub use ") {
                sig.trim_end_matches(';').to_owned()
            } else {
                sig.split(" {").next().unwrap_or_default().to_owned()
            };
            let sig = sig.trim_end_matches([',', ';', ' ']).to_owned();
            if line.starts_with("pub ") {
                let prefix = if non_exhaustive {
                    "#[non_exhaustive] "
                } else {
                    ""
                };
                out.push(format!("{prefix}{sig}"));
                if line.starts_with("pub enum ") {
                    enum_depth = Some(depth + 1);
                }
            }
            non_exhaustive = false;
        } else if let Some(d) = enum_depth
            && depth == d
            && line.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        {
            let variant = line.split(['(', ' ', ',', '{']).next().unwrap_or_default();
            out.push(format!("  variant {variant}"));
        } else if !line.starts_with("#[") {
            non_exhaustive = false;
        }
        depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
        if enum_depth.is_some_and(|d| depth < d) {
            enum_depth = None;
        }
        i += 1;
    }
    out
}

fn render() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let mut s = String::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read source");
        let items = items(&text);
        if items.is_empty() {
            continue;
        }
        let rel = f.strip_prefix(root).expect("under the crate").display();
        let _ = writeln!(s, "{rel}");
        for it in items {
            let _ = writeln!(s, "  {it}");
        }
    }
    s
}

#[test]
fn public_api_changes_come_with_a_version_bump() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("api.txt");
    let version = env!("CARGO_PKG_VERSION");
    let api = render();
    let current = format!("version {version}\n\n{api}");
    if std::env::var_os("CERTSMITH_BLESS").is_some() {
        std::fs::write(&path, &current).expect("write api.txt");
        return;
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_default();
    let (golden_version, golden_api) = golden
        .split_once("\n\n")
        .map(|(v, a)| (v.trim_start_matches("version ").to_owned(), a.to_owned()))
        .unwrap_or_default();
    if golden_api == api {
        return;
    }
    if golden_version == version {
        panic!(
            "the public API of certsmith-plugin-api changed but its version is still {version}: \
             bump `version` in plugin-api/Cargo.toml (minor for additions, major for \
             removals/changes while 0.x counts minor as major), then record it with \
             CERTSMITH_BLESS=1 cargo test -p certsmith-plugin-api --test public_api\n\
             --- api.txt\n{golden_api}\n--- now\n{api}"
        );
    }
    panic!(
        "the public API changed with the version bump to {version} (api.txt has {golden_version}): \
         record it with CERTSMITH_BLESS=1 cargo test -p certsmith-plugin-api --test public_api"
    );
}

#[test]
fn the_listing_sees_items_fields_variants_and_attributes() {
    let text = "#[non_exhaustive]\npub enum E {\n    /// doc\n    A,\n    B(u8),\n}\n\
                pub struct S {\n    pub f: u32,\n    g: u8,\n}\nimpl S {\n    pub fn new(\n        a: u8,\n    ) -> S {\n        S\n    }\n}\n\
                pub(crate) fn hidden() {}\n#[cfg(test)]\nmod tests { pub fn t() {} }\n";
    assert_eq!(
        items(text),
        [
            "#[non_exhaustive] pub enum E",
            "  variant A",
            "  variant B",
            "pub struct S",
            "pub f: u32",
            "pub fn new(a: u8) -> S",
        ]
    );
}
