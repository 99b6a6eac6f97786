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
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

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

/// The plugins on a search path, loaded when asked for.
///
/// Why lazily: loading a library maps it, applies its relocations and runs
/// its handshake. An `issue` that needs one solver out of the thirteen that
/// ship would otherwise load them all: about 5 MiB more resident memory and
/// a fifth more CPU for nothing. [`PluginHost::get`] loads only the file
/// named for the code (`libcertsmith_<code>.so`, the first on the path; a
/// plugin's manifest code must match its file name). Anything that needs the
/// whole picture ([`PluginHost::plugins`], problems, shadowed files, and
/// `get` of a code with no loadable file of its name, for its error message)
/// loads every candidate once, with the same first-on-the-path rules.
#[derive(Debug, Default)]
pub struct PluginHost {
    search: SearchPath,
    /// Candidate files, in search order.
    candidates: Vec<PathBuf>,
    /// Plugins loaded one at a time by `get`, by code.
    loaded: Mutex<BTreeMap<String, Arc<LoadedPlugin>>>,
    /// Everything, once something needed it.
    all: OnceLock<Everything>,
}

/// Every candidate loaded.
#[derive(Debug, Default)]
struct Everything {
    plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    shadowed: Vec<(Arc<LoadedPlugin>, PathBuf)>,
    duplicates: BTreeMap<String, (PathBuf, PathBuf)>,
    problems: Vec<Problem>,
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
    /// Lists the plugin files on the search path; loads none yet.
    pub fn discover(search: &SearchPath) -> PluginHost {
        let mut candidates = Vec::new();
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
            candidates.extend(files);
        }
        PluginHost {
            search: search.clone(),
            candidates,
            ..Default::default()
        }
    }

    /// Loads every candidate (once).
    fn everything(&self) -> &Everything {
        self.all.get_or_init(|| {
            let mut all = Everything::default();
            let mut dir_of_code: BTreeMap<String, (PathBuf, PathBuf)> = BTreeMap::new();
            for path in &self.candidates {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                let result = self.already_loaded(path).map(Ok).unwrap_or_else(|| {
                    load_plugin(path, &self.search.policy)
                        .and_then(|p| named_for(p, path))
                        .map(Arc::new)
                });
                match result {
                    Ok(p) => {
                        let code = p.manifest().code.clone();
                        if let Some((first_dir, first)) = dir_of_code.get(&code)
                            && *first_dir == dir
                        {
                            all.duplicates
                                .insert(code.clone(), (first.clone(), path.clone()));
                            continue;
                        }
                        dir_of_code
                            .entry(code.clone())
                            .or_insert_with(|| (dir.clone(), path.clone()));
                        match all.plugins.get(&code) {
                            Some(winner) => all.shadowed.push((p, winner.path().to_owned())),
                            None => {
                                all.plugins.insert(code, p);
                            }
                        }
                    }
                    Err(error) => {
                        log::info!("plugin {} not loaded: {error}", path.display());
                        all.problems.push(Problem {
                            path: path.clone(),
                            error,
                        });
                    }
                }
            }
            all
        })
    }

    /// The plugin `get` already loaded from `path`, if any (a library is
    /// loaded once per process: never twice for one file).
    fn already_loaded(&self, path: &Path) -> Option<Arc<LoadedPlugin>> {
        let loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        loaded.values().find(|p| p.path() == path).cloned()
    }

    /// Adds one explicitly named library (used by `certsmith plugin check`).
    pub fn load_file(
        path: &Path,
        policy: &LoadPolicy,
    ) -> Result<Arc<LoadedPlugin>, PluginHostError> {
        load_plugin(path, policy).map(Arc::new)
    }

    /// The plugin for `code`: the first file on the path named for it,
    /// loaded now if it was not yet. When there is none, or it does not
    /// load, every candidate is loaded and the answer is what the whole
    /// path says (a later file of that code, or an error listing what is
    /// available, the nearest code and what was refused).
    pub fn get(&self, code: &str) -> Result<Arc<LoadedPlugin>, PluginHostError> {
        if self.all.get().is_none() {
            if let Some(p) = self
                .loaded
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(code)
            {
                return Ok(p.clone());
            }
            let first = self.candidates.iter().find(|p| file_code(p) == Some(code));
            if let Some(path) = first
                && let Ok(p) =
                    load_plugin(path, &self.search.policy).and_then(|p| named_for(p, path))
            {
                let p = Arc::new(p);
                self.loaded
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(code.to_owned(), p.clone());
                return Ok(p);
            }
        }
        let all = self.everything();
        if let Some((first, second)) = all.duplicates.get(code) {
            return Err(PluginHostError::DuplicateCode {
                code: code.to_owned(),
                first: first.clone(),
                second: second.clone(),
            });
        }
        all.plugins
            .get(code)
            .cloned()
            .ok_or_else(|| PluginHostError::UnknownSolver {
                code: code.to_owned(),
                available: all.plugins.keys().cloned().collect(),
                suggestion: nearest(code, all.plugins.keys().map(String::as_str))
                    .map(str::to_owned),
                searched: self.search.dirs.clone(),
                refused: all.problems.iter().map(|p| p.error.to_string()).collect(),
            })
    }

    /// Every plugin on the path, by code (loads them all).
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.everything().plugins.values()
    }

    /// Plugins hidden by one of the same code earlier on the path, with the
    /// winner's path (loads them all).
    pub fn shadowed(&self) -> &[(Arc<LoadedPlugin>, PathBuf)] {
        &self.everything().shadowed
    }

    /// Files that were refused, and why (loads them all).
    pub fn problems(&self) -> &[Problem] {
        &self.everything().problems
    }

    /// Codes declared twice within one directory (loads them all).
    pub fn duplicate_errors(&self) -> Vec<PluginHostError> {
        self.everything()
            .duplicates
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
        &self.search.dirs
    }
}
