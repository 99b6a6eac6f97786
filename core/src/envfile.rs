//! Values from the environment: `NAME`, else the file named by
//! `NAME_FILE` (how container platforms hand over secrets).
//!
//! Why this module exists: solver options, EAB credentials and any other
//! secret certsmith takes from its environment follow the same rule, and
//! the rule lives here once.

use std::path::PathBuf;

/// A `NAME_FILE` variable names a file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {var}={}: {source}", path.display())]
pub struct EnvFileError {
    /// The `*_FILE` variable.
    pub var: String,
    /// The file it names.
    pub path: PathBuf,
    /// Why it cannot be read.
    #[source]
    pub source: std::io::Error,
}

/// The process environment, as a lookup function.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `name`'s value, else the contents of the file named by `name_FILE`
/// (without its trailing newline), with the variable it came from; `None`
/// when neither is set.
pub fn var_or_file(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(String, String)>, EnvFileError> {
    if let Some(v) = env(name) {
        return Ok(Some((name.to_owned(), v)));
    }
    let file_var = format!("{name}_FILE");
    let Some(path) = env(&file_var) else {
        return Ok(None);
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some((
            file_var,
            text.trim_end_matches(['\n', '\r']).to_owned(),
        ))),
        Err(source) => Err(EnvFileError {
            var: file_var,
            path: path.into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_then_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\n").expect("write");
        let f = file.display().to_string();
        let only_file = |k: &str| (k == "X_FILE").then(|| f.clone());
        assert_eq!(
            var_or_file("X", &only_file).expect("ok"),
            Some(("X_FILE".to_owned(), "from-file".to_owned()))
        );
        let both = |k: &str| match k {
            "X" => Some("direct".to_owned()),
            _ => only_file(k),
        };
        assert_eq!(
            var_or_file("X", &both).expect("ok"),
            Some(("X".to_owned(), "direct".to_owned()))
        );
        assert_eq!(var_or_file("X", &|_| None).expect("ok"), None);
        let missing = |k: &str| (k == "X_FILE").then(|| "/nonexistent/x".to_owned());
        let err = var_or_file("X", &missing).expect_err("unreadable");
        assert!(err.to_string().contains("X_FILE=/nonexistent/x"), "{err}");
    }
}
