//! certsmith's engine.
//!
//! Data flows one way: the CLI calls this crate, and this crate reaches
//! challenge solvers only through [`plugin`], the host side of the
//! `certsmith-plugin-api` ABI. No solver crate is a dependency of this one.

pub mod acme;
pub mod agent;
pub mod config;
pub mod dns;
pub mod engine;
pub mod envfile;
pub mod error;
pub mod hooks;
pub mod identifiers;
pub mod journal;
pub mod keys;
pub mod metrics;
pub mod plugin;
pub mod progress;
pub mod renewal;
pub mod store;
pub mod timefmt;
