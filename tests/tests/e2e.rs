//! End-to-end tests of certsmith against real servers on loopback.
//!
//! This is the one integration-test binary of `certsmith-tests` (Cargo.toml
//! sets `autotests = false`): each area is a module in a file next to this
//! one (`tests/tests/<area>.rs`), declared below. Servers come from the
//! `certsmith_tests` harness library; the certsmith binary is
//! `certsmith_tests::certsmith_bin()` (build it first: `cargo build
//! --workspace`, as scripts/test does).

mod accounts;
mod catalogue_a;
mod catalogue_b;
mod cli12;
mod cli_ergonomics;
mod cloudflare;
mod daemon;
mod dns01;
mod docs;
mod doctor;
mod doctor_catalogue;
mod eab;
mod ergonomics;
mod faults;
mod fleet;
mod gendocs;
mod harness;
mod hints;
mod issue;
pub(crate) mod json_schema;
mod lifecycle;
mod operator;
mod ops12;
mod outsiders;
mod pg_cli;
mod pg_store;
mod plugin_host;
mod progress;
mod propagation_modes;
mod secrets;
mod store_compat;
mod sync_migrate;
