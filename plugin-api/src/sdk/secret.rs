//! [`Secret`]: a credential that never shows up in a log, an error or a
//! `Debug` dump, and is overwritten when dropped.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A secret string: an API token, a key, a password.
///
/// * `Debug` and `Display` print `[redacted]`, so `#[derive(Debug)]` on a
///   config struct and `log::debug!("{config:?}")` are safe.
/// * The bytes are overwritten with zeros when the value is dropped (with
///   volatile writes the compiler cannot remove). Copies you make with
///   [`expose`](Secret::expose) (`to_owned()`, `format!`, an HTTP header)
///   are yours to keep short-lived; this type cannot reach them.
/// * It deserializes from a JSON string, so a `Config` field declared
///   `secret = true` in `plugin.toml` can simply be a `Secret`:
///
/// ```
/// use certsmith_plugin_api::sdk::Secret;
///
/// #[derive(Debug, serde::Deserialize)]
/// struct Config {
///     api_token: Secret,
/// }
///
/// let c: Config = serde_json::from_str(r#"{"api_token":"hunter2"}"#).unwrap();
/// assert_eq!(c.api_token.expose(), "hunter2");
/// assert!(!format!("{c:?}").contains("hunter2"));
/// assert_eq!(c.api_token.to_string(), "[redacted]");
/// ```
///
/// The host redacts every value of a `secret = true` key from what the
/// plugin logs and returns as well; this type keeps the plugin from
/// producing them in the first place.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, to hand to the provider's API. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        wipe(&mut bytes);
    }
}

/// Overwrites every byte of `bytes`' allocation (its whole capacity) with
/// zeros and leaves it empty.
fn wipe(bytes: &mut Vec<u8>) {
    let (ptr, cap) = (bytes.as_mut_ptr(), bytes.capacity());
    for i in 0..cap {
        // SAFETY: `ptr` points to the Vec's allocation of `cap` bytes, which
        // `bytes` (borrowed mutably) owns exclusively; `i < cap`. Volatile so
        // the stores are not removed as dead before the free.
        unsafe { std::ptr::write_volatile(ptr.add(i), 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    // SAFETY: 0 <= capacity; the bytes need no drop.
    unsafe { bytes.set_len(0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(s.expose(), "hunter2");
        assert!(!s.is_empty() && Secret::default().is_empty());
    }

    #[test]
    fn wipe_zeroes_the_whole_allocation() {
        let mut v = Vec::with_capacity(32);
        v.extend_from_slice(b"hunter2hunter2");
        v.resize(32, b'x');
        v.truncate(14);
        let cap = v.capacity();
        wipe(&mut v);
        assert!(v.is_empty());
        // SAFETY: `wipe` initialized every byte of the capacity (to 0).
        unsafe { v.set_len(cap) };
        assert!(v.iter().all(|&b| b == 0), "{v:?}");
    }
}
