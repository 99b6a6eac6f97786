//! Exit codes, one per failure class, so that a CI pipeline can tell "fix
//! your config" from "the CA is down" without parsing messages.
//!
//! These numbers are part of certsmith's interface (README.md lists them);
//! never renumber one.

/// Success.
pub(crate) const OK: u8 = 0;
/// An unexpected internal error (a bug).
pub(crate) const INTERNAL: u8 = 1;
/// Bad input: command line, config file, identifiers, an unknown solver
/// code, missing or invalid solver options, an unusable state directory.
pub(crate) const USAGE: u8 = 2;
/// A solver plugin could not be loaded (refused file, failed handshake),
/// refused to start, or failed to present or clean up a challenge.
pub(crate) const SOLVER: u8 = 3;
/// The CA refused a validation or the order (its problem document is shown).
pub(crate) const CA_REFUSED: u8 = 4;
/// The CA rate-limited the request (the retry-after time is shown).
pub(crate) const RATE_LIMITED: u8 = 5;
/// A DNS record did not reach every authoritative nameserver in time.
pub(crate) const PROPAGATION_TIMEOUT: u8 = 6;
/// The CA or network could not be reached.
pub(crate) const NETWORK: u8 = 7;
/// `run`/`renew`: some certificates succeeded and some failed, or they
/// failed for different reasons. When every certificate that failed did so
/// for one class, and none succeeded, that class's code is used instead.
pub(crate) const PARTIAL: u8 = 8;
/// A hook failed or timed out. A deploy hook or post-hook: the new
/// certificate is in place and valid; only the hook (e.g. the web server
/// reload) needs attention. A pre-hook: that certificate was not ordered
/// (its post-hook ran).
/// Like every class, `run`/`renew` return it only when no certificate
/// succeeded and all failed this way; otherwise [`PARTIAL`].
pub(crate) const DEPLOY_HOOK: u8 = 9;
/// `doctor`: at least one check failed (each failed check says how to fix
/// it). Warnings and skipped checks alone exit 0.
pub(crate) const DOCTOR: u8 = 10;
/// stdout was closed before everything was printed (the reader went
/// away, as `certsmith list | head -1` does): 128 + SIGPIPE, as shells
/// report it. Nothing else is printed; the store work was done first.
pub(crate) const STDOUT_CLOSED: u8 = 141;
/// Interrupted by SIGINT (Ctrl-C) or SIGTERM: 128 + SIGINT, as shells do.
pub(crate) const INTERRUPTED: u8 = 130;
