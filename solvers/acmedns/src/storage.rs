//! The account storage file shared with lego and certbot: a JSON object
//! mapping a domain (without `*.`) to the account acme-dns registered for
//! it, `{username, password, fulldomain, subdomain, allowfrom}` as
//! `/register` answers (certbot's hooks), plus `server_url` (lego).
//!
//! Fields this plugin does not know are kept when it writes the file back,
//! so a file that another tool also writes is never stripped.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use certsmith_plugin_api::{PluginError, Secret};
use serde_json::{Map, Value};

/// One account, as the plugin uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    /// `X-Api-User`.
    pub username: String,
    /// `X-Api-Key`.
    pub password: Secret,
    /// Where `_acme-challenge.<domain>` must point.
    pub fulldomain: String,
    /// The account's subdomain, sent with each update.
    pub subdomain: String,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("username", &self.username)
            .field("password", &self.password)
            .field("fulldomain", &self.fulldomain)
            .field("subdomain", &self.subdomain)
            .finish()
    }
}

impl Account {
    /// The account stored under a domain, if the entry has what is needed.
    pub fn from_entry(entry: &Value) -> Option<Account> {
        let s = |k: &str| entry.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(Account {
            username: s("username")?,
            password: Secret::new(s("password")?),
            fulldomain: s("fulldomain")?,
            subdomain: s("subdomain")?,
        })
    }
}

/// The storage file.
#[derive(Debug, Clone)]
pub struct Storage {
    path: PathBuf,
}

impl Storage {
    /// The file at `path` (it need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Storage { path: path.into() }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry; a missing file is empty.
    pub fn load(&self) -> Result<Map<String, Value>, PluginError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
            Err(e) => {
                return Err(PluginError::config(format!(
                    "cannot read the acme-dns storage file {}: {e}; check ACME_DNS_STORAGE_PATH and the file's permissions",
                    self.path.display()
                )));
            }
        };
        if text.trim().is_empty() {
            return Ok(Map::new());
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(self.malformed("it is not a JSON object")),
            // serde_json's message names line and column, never the text.
            Err(e) => Err(self.malformed(&e.to_string())),
        }
    }

    fn malformed(&self, why: &str) -> PluginError {
        PluginError::config(format!(
            "the acme-dns storage file {} is not valid ({why}); it must be a JSON object of domain → {{username, password, fulldomain, subdomain}}, as lego and certbot write it",
            self.path.display()
        ))
    }

    /// The account for `domain`: stored under it (any case, with or
    /// without a trailing dot or `*.`), else the one whose fulldomain is
    /// `target` (an account shared by several domains through their CNAMEs).
    pub fn find(
        entries: &Map<String, Value>,
        domain: &str,
        target: &str,
    ) -> Option<(String, Account)> {
        let norm = |s: &str| {
            s.trim()
                .trim_end_matches('.')
                .trim_start_matches("*.")
                .to_ascii_lowercase()
        };
        let by_domain = entries
            .iter()
            .find(|(k, _)| norm(k) == domain)
            .and_then(|(k, v)| Some((k.clone(), Account::from_entry(v)?)));
        by_domain.or_else(|| {
            entries.iter().find_map(|(k, v)| {
                let a = Account::from_entry(v)?;
                (norm(&a.fulldomain) == target).then(|| (k.clone(), a))
            })
        })
    }

    /// Adds (or replaces) `domain`'s entry: re-reads the file, so entries
    /// another writer added meanwhile are kept, and writes it atomically
    /// (a temporary file in the same directory, mode 0600, renamed).
    pub fn put(&self, domain: &str, entry: Value) -> Result<(), PluginError> {
        let mut all = self.load()?;
        all.insert(domain.to_owned(), entry);
        let text = serde_json::to_string_pretty(&Value::Object(all))
            .map_err(|e| PluginError::internal(format!("cannot encode the storage: {e}")))?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let fail = |what: &str, e: std::io::Error| {
            PluginError::config(format!(
                "cannot {what} the acme-dns storage file {}: {e}; the directory must be writable (ACME_DNS_STORAGE_PATH)",
                self.path.display()
            ))
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "acme-dns.json".into());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| fail("write", e))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.write_all(b"\n"))
                .and_then(|()| f.sync_all())
                .map_err(|e| fail("write", e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail("replace", e)
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_lego_and_certbot_files_and_keeps_unknown_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("acme-dns.json");
        // certbot's acme-dns-auth.py writes the /register answer as is;
        // lego adds server_url.
        std::fs::write(
            &path,
            json!({
                "example.com": {"username": "u1", "password": "p1", "fulldomain": "s1.auth.example.org",
                                "subdomain": "s1", "allowfrom": []},
                "other.org": {"username": "u2", "password": "p2", "fulldomain": "s2.auth.example.org",
                              "subdomain": "s2", "server_url": "https://auth.example.org"},
            })
            .to_string(),
        )
        .expect("write");
        let st = Storage::new(&path);
        let all = st.load().expect("load");
        let (k, a) =
            Storage::find(&all, "example.com", "_acme-challenge.example.com").expect("found");
        assert_eq!((k.as_str(), a.subdomain.as_str()), ("example.com", "s1"));
        // By CNAME target, for a domain stored under another name.
        let (k, _) =
            Storage::find(&all, "www.other.org", "s2.auth.example.org").expect("by target");
        assert_eq!(k, "other.org");
        assert!(Storage::find(&all, "nope.test", "x").is_none());
        assert!(!format!("{a:?}").contains("p1"));

        st.put(
            "new.test",
            json!({"username": "u3", "password": "p3", "fulldomain": "f", "subdomain": "s3"}),
        )
        .expect("put");
        let again = st.load().expect("reload");
        assert_eq!(again.len(), 3);
        assert_eq!(again["other.org"]["server_url"], "https://auth.example.org");
        assert_eq!(again["example.com"]["allowfrom"], json!([]));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_missing_file_is_empty_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Storage::new(dir.path().join("none.json"));
        assert!(st.load().expect("empty").is_empty());
        std::fs::write(st.path(), "{\"secret-ish\": ").expect("write");
        let e = st.load().expect_err("broken");
        assert!(
            e.message.contains("none.json") && !e.message.contains("secret-ish"),
            "{}",
            e.message
        );
    }
}
