//! The plugin host: finds solver libraries, loads them safely, checks the
//! handshake, validates their configuration, and turns their C callbacks into
//! Rust futures.
//!
//! Why a host at all: certsmith ships no solver inside its binary. Every
//! solver, built-in or third-party, is a dynamic library speaking the C ABI
//! of `certsmith-plugin-api`, so that plugins can be released on their own
//! and keep loading across certsmith releases and Rust compilers. This module
//! is the one place that crosses that boundary; the rest of the engine sees
//! only [`SolverInstance::present`] and [`SolverInstance::cleanup`].
//!
//! * [`discover`] walks the search path and applies the load policy
//!   (permissions, sha256 pins, `RTLD_NOW | RTLD_LOCAL`, never unload).
//! * [`load`] performs the handshake on one library.
//! * [`config`] assembles and validates a plugin's configuration against its
//!   manifest, and knows which values are secret.
//! * [`instance`] is the async adapter: completion → future, host-side
//!   timeout, `cancel` when the future is dropped.

pub mod check;
mod config;
mod discover;
mod error;
mod http;
mod instance;
mod load;

pub use config::{ConfigSources, Redactor, ResolvedConfig, nearest, parse_solver_opt, resolve};
pub use discover::{PluginHost, Problem, SearchPath};
pub use error::{CallError, PluginHostError};
pub use instance::SolverInstance;
pub use load::{LoadPolicy, LoadedPlugin, host_api, load_plugin};
