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
//!         Ok(Presented::default())
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

pub mod abi;
pub mod manifest;
pub mod wire;

#[cfg(feature = "sdk")]
pub mod sdk;

pub use manifest::{ConfigKey, ConfigType, Defaults, Manifest, ManifestError};
pub use wire::{
    ChallengeRequest, ChallengeType, CleanupParams, DnsTarget, ErrorBody, ErrorKind,
    METHOD_CLEANUP, METHOD_PRESENT, PluginError, Presented,
};

#[cfg(feature = "sdk")]
pub use sdk::{Deadline, Solver, async_trait};

/// The `log` crate, re-exported so plugins log through the same instance the
/// SDK forwards to the host.
#[cfg(feature = "sdk")]
pub use log;
