//! The stable contract between certsmith and its challenge-solver plugins.
//!
//! certsmith loads every challenge solver (Cloudflare, Route53, RFC 2136,
//! webroot, standalone HTTP, and anything a third party writes) from a
//! dynamic library at run time. This crate is the only thing the two sides
//! share, and it is built so that a plugin compiled by one Rust compiler
//! keeps loading into a certsmith built by another:
//!
//! * [`abi`]: the C ABI (v1): `#[repr(C)]` structs, `extern "C"` functions,
//!   integers and borrowed byte slices. No Rust type, tokio type or
//!   allocation crosses it. Its module docs state the ownership rules.
//! * [`wire`]: the JSON payloads ([`ChallengeRequest`], [`DnsTarget`],
//!   [`Presented`], [`ErrorBody`]), tolerant of fields added later.
//! * [`manifest`]: `plugin.toml`, which declares a plugin's code, challenge
//!   types and configuration keys (type, required, secret, env var).
//! * `sdk` (default feature `sdk`): what a plugin author uses: the
//!   [`Solver`] trait and the [`export_solver!`] macro, which together hide
//!   every `unsafe` line, catch panics, enforce deadlines, handle
//!   cancellation and forward `log` records to the host; and [`Deadline`]
//!   (from [`ChallengeRequest::deadline`]), the time a call has left.
//!
//! A whole plugin:
//!
//! ```text
//! use certsmith_plugin_api::{async_trait, ChallengeRequest, PluginError, Presented, Solver};
//!
//! struct Echo;
//!
//! #[async_trait]
//! impl Solver for Echo {
//!     type Config = serde_json::Value;
//!     fn new(_: Self::Config) -> Result<Self, PluginError> { Ok(Echo) }
//!     async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
//!         certsmith_plugin_api::log::info!("presenting {}", req.identifier);
//!         Ok(Presented::new(serde_json::json!({"id": 1})))
//!     }
//!     async fn cleanup(&self, _: &ChallengeRequest, _: &Presented) -> Result<(), PluginError> {
//!         Ok(())
//!     }
//! }
//!
//! certsmith_plugin_api::export_solver!(Echo, manifest = include_str!("../plugin.toml"));
//! ```
//!
//! The host side (loading, handshake, config validation) lives in
//! `certsmith-core`, which uses this crate with `default-features = false`.
//!
//! # Versions
//!
//! This crate needs Rust 1.95 (edition 2024) and follows semver on its own.
//! The ABI it implements is [`abi::ABI_MAJOR`].[`abi::ABI_MINOR`] (1.2): a
//! host loads plugins built for its minor or an older one and refuses newer
//! ones, naming both. The wire types are `#[non_exhaustive]`: read their
//! fields, build them with their constructors.
//!
//! # What the host does around a plugin
//!
//! * Validates the configuration against `plugin.toml` (types, required,
//!   `min`/`max`/`pattern`) and redacts `secret` values everywhere. An
//!   option neither set nor defaulted is absent from the config JSON, never
//!   `null`.
//! * For dns-01, computes the whole [`DnsTarget`] (value, CNAMEs, zone by
//!   SOA, primary nameserver), checks propagation and always cleans up.
//!   [`DnsTarget::ttl`] is the manifest's `[defaults] ttl`;
//!   [`Presented::ttl`] is recorded and handed back to `cleanup`.
//! * Serializes `present`/`cleanup` of one solver at one name across
//!   certsmith processes sharing a state directory (inside a process, use
//!   [`NameLocks`](sdk::NameLocks)).
//! * Shows the plugin's `log` records: `info!` with `-v`, `debug!` with
//!   `-vv` (the plugin's dependencies' too), `warn!`/`error!` always.
//!
//! Start a new plugin with `certsmith plugin new CODE --dns|--http`; the
//! example plugin's README in the certsmith repository is the full guide.

#![warn(missing_docs)]

/// This crate's version, e.g. `"0.2.0"` (independent of the ABI version in
/// [`abi::ABI_MAJOR`].[`abi::ABI_MINOR`]).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod abi;
mod http_errors;
pub mod manifest;
pub mod wire;

#[cfg(feature = "sdk")]
pub mod sdk;

pub use manifest::{
    ConfigKey, ConfigType, ConfigValue, Defaults, Manifest, ManifestError, ValueError,
};
pub use wire::{
    ChallengeRequest, ChallengeType, CheckZone, CleanupParams, CredentialsCheck,
    CredentialsChecked, DnsTarget, ErrorBody, ErrorKind, METHOD_CHECK_CREDENTIALS, METHOD_CLEANUP,
    METHOD_PRESENT, PluginError, Presented,
};

#[cfg(feature = "sdk")]
pub use sdk::{Backoff, Deadline, NameLocks, Secret, Solver, async_trait, retry};

/// The `log` crate, re-exported so plugins log through the same instance the
/// SDK forwards to the host.
#[cfg(feature = "sdk")]
pub use log;
