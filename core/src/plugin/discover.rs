//! Finding plugins along the search path.
//!
//! Search order, first match of a code wins: `--plugin-dir`,
//! `CERTSMITH_PLUGIN_PATH` (colon-separated), the config file's
//! `plugin_dirs`, the directory of the `certsmith` executable, and
//! `<exe>/../lib/certsmith/plugins`. A file is a candidate when its name is
//! `libcertsmith_*.so` (`.dylib` on macOS). Files that fail to load are not
//! fatal for discovery: they are kept as [`Problem`]s, shown by
//! `certsmith solvers list`, and mentioned when a code is not found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::config::nearest;
use super::error::PluginHostError;
use super::load::{LoadPolicy, LoadedPlugin, load_plugin};

/// The directories to search, in order.
#[derive(Clone, Debug, Default)]
pub struct SearchPath {
    /// Directories, highest priority first.
    pub dirs: Vec<PathBuf>,
    /// What the loader accepts (sha256 pins).
    pub policy: LoadPolicy,
}

/// The plugin file name prefix and suffix on this platform.
pub(crate) const PREFIX: &str = "libcertsmith_";
#[cfg(target_os = "macos")]
pub(crate) const SUFFIX: &str = ".dylib";
#[cfg(not(target_os = "macos"))]
pub(crate) const SUFFIX: &str = ".so";

impl SearchPath {
    /// The standard search path: `cli_dirs`, `$CERTSMITH_PLUGIN_PATH`,
    /// `config_dirs`, the executable's directory, `<exe>/../lib/certsmith/plugins`.
    pub fn standard(cli_dirs: &[PathBuf], config_dirs: &[PathBuf]) -> SearchPath {
        let mut dirs: Vec<PathBuf> = cli_dirs.to_vec();
        if let Some(p) = std::env::var_os("CERTSMITH_PLUGIN_PATH") {
            dirs.extend(std::env::split_paths(&p).filter(|d| !d.as_os_str().is_empty()));
        }
        dirs.extend(config_dirs.iter().cloned());
        if let Some(exe_dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.canonicalize().ok())
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            let lib = exe_dir.join("../lib/certsmith/plugins");
            dirs.push(exe_dir);
            dirs.push(lib);
        }
        let mut seen = Vec::new();
        dirs.retain(|d| {
            let key = d.canonicalize().unwrap_or_else(|_| d.clone());
            if seen.contains(&key) {
                false
            } else {
                seen.push(key);
                true
            }
        });
        SearchPath {
            dirs,
            policy: LoadPolicy::default(),
        }
    }
}

/// A file that looked like a plugin but was not loaded.
#[derive(Debug)]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub error: PluginHostError,
}

/// Every plugin found on a search path.
#[derive(Debug, Default)]
pub struct PluginHost {
    plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    shadowed: Vec<(Arc<LoadedPlugin>, PathBuf)>,
    duplicates: BTreeMap<String, (PathBuf, PathBuf)>,
    problems: Vec<Problem>,
    searched: Vec<PathBuf>,
}

fn is_candidate(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
}

/// The code a candidate's file name gives (`libcertsmith_<code>.so`).
fn file_code(path: &Path) -> Option<&str> {
    path.file_name()?
        .to_str()?
        .strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)
}

/// `plugin` if its manifest's code is the one its file name gives.
fn named_for(plugin: LoadedPlugin, path: &Path) -> Result<LoadedPlugin, PluginHostError> {
    match file_code(path) {
        Some(code) if code != plugin.manifest().code => Err(PluginHostError::CodeMismatch {
            path: path.to_owned(),
            file_code: code.to_owned(),
            manifest_code: plugin.manifest().code.clone(),
        }),
        _ => Ok(plugin),
    }
}

impl PluginHost {
    /// Loads every plugin on the search path.
    pub fn discover(search: &SearchPath) -> PluginHost {
        let mut host = PluginHost {
            searched: search.dirs.clone(),
            ..Default::default()
        };
        for dir in &search.dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| is_candidate(p) && p.is_file())
                .collect();
            files.sort();
            let mut in_this_dir: BTreeMap<String, PathBuf> = BTreeMap::new();
            for path in files {
                match load_plugin(&path, &search.policy).and_then(|p| named_for(p, &path)) {
                    Ok(p) => {
                        let code = p.manifest().code.clone();
                        if let Some(first) = in_this_dir.get(&code) {
                            host.duplicates
                                .insert(code.clone(), (first.clone(), path.clone()));
                            continue;
                        }
                        in_this_dir.insert(code.clone(), path.clone());
                        let p = Arc::new(p);
                        match host.plugins.get(&code) {
                            Some(winner) => host.shadowed.push((p, winner.path().to_owned())),
                            None => {
                                host.plugins.insert(code, p);
                            }
                        }
                    }
                    Err(error) => host.problems.push(Problem { path, error }),
                }
            }
        }
        host
    }

    /// Adds one explicitly named library (used by `certsmith plugin check`).
    pub fn load_file(
        path: &Path,
        policy: &LoadPolicy,
    ) -> Result<Arc<LoadedPlugin>, PluginHostError> {
        load_plugin(path, policy).map(Arc::new)
    }

    /// The plugin for `code`.
    pub fn get(&self, code: &str) -> Result<Arc<LoadedPlugin>, PluginHostError> {
        if let Some((first, second)) = self.duplicates.get(code) {
            return Err(PluginHostError::DuplicateCode {
                code: code.to_owned(),
                first: first.clone(),
                second: second.clone(),
            });
        }
        self.plugins
            .get(code)
            .cloned()
            .ok_or_else(|| PluginHostError::UnknownSolver {
                code: code.to_owned(),
                available: self.plugins.keys().cloned().collect(),
                suggestion: nearest(code, self.plugins.keys().map(String::as_str))
                    .map(str::to_owned),
                searched: self.searched.clone(),
                refused: self.problems.iter().map(|p| p.error.to_string()).collect(),
            })
    }

    /// The plugins found, by code.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.plugins.values()
    }

    /// Plugins hidden by one of the same code earlier on the path, with the
    /// winner's path.
    pub fn shadowed(&self) -> &[(Arc<LoadedPlugin>, PathBuf)] {
        &self.shadowed
    }

    /// Files that were refused, and why.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Codes declared twice within one directory.
    pub fn duplicate_errors(&self) -> Vec<PluginHostError> {
        self.duplicates
            .iter()
            .map(|(code, (first, second))| PluginHostError::DuplicateCode {
                code: code.clone(),
                first: first.clone(),
                second: second.clone(),
            })
            .collect()
    }

    /// The directories searched.
    pub fn searched(&self) -> &[PathBuf] {
        &self.searched
    }
}
