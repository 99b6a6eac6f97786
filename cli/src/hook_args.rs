//! The hook flags shared by `issue`, `run` and `renew`: what runs before a
//! certificate's challenges, after them, and after it is stored.

use std::time::Duration;

use certsmith_core::config::{CertificateConfig, MAX_HOOK_TIMEOUT, parse_duration};

/// Commands run around each certificate (docs/design.md §4.5).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct HookArgs {
    /// Run this shell command before a certificate's challenges are
    /// presented (e.g. stop a web server that holds port 80); if it fails,
    /// that certificate is not ordered (exit 9) and its post-hook still
    /// runs. Gets CERTSMITH_HOOK=pre, CERTSMITH_CERT_NAME,
    /// CERTSMITH_DOMAINS.
    #[arg(long, value_name = "CMD", value_parser = non_empty("--pre-hook"))]
    pub(crate) pre_hook: Option<String>,
    /// Run this shell command after a certificate's challenges are cleaned
    /// up, whatever happened. Gets CERTSMITH_HOOK=post,
    /// CERTSMITH_CERT_NAME, CERTSMITH_DOMAINS and CERTSMITH_RESULT (ok or
    /// failed).
    #[arg(long, value_name = "CMD", value_parser = non_empty("--post-hook"))]
    pub(crate) post_hook: Option<String>,
    /// Run this shell command as soon as each certificate is stored (other
    /// orders of the batch go on). Gets CERTSMITH_HOOK=deploy,
    /// CERTSMITH_CERT_NAME, CERTSMITH_DOMAINS, CERTSMITH_CERT_DIR,
    /// CERTSMITH_FULLCHAIN, CERTSMITH_PRIVKEY (empty with --csr),
    /// CERTSMITH_CSR (with --csr), CERTSMITH_CERT, CERTSMITH_CHAIN and
    /// CERTSMITH_VERSION.
    #[arg(long, value_name = "CMD", value_parser = non_empty("--deploy-hook"))]
    pub(crate) deploy_hook: Option<String>,
    /// Kill each hook (with its process group) after this long: SECS or a
    /// duration such as 90s, 5m [default: the config's hook_timeout, else
    /// 120s].
    #[arg(long, alias = "deploy-hook-timeout", value_name = "DURATION", value_parser = parse_timeout)]
    pub(crate) hook_timeout: Option<Duration>,
}

pub(crate) fn non_empty(flag: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |s: &str| {
        if s.trim().is_empty() {
            Err(format!(
                "{flag} is empty: give a shell command, or leave the flag out"
            ))
        } else {
            Ok(s.to_owned())
        }
    }
}

/// SECS or a duration (`90s`, `5m`), between 1s and 24h.
pub(crate) fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => parse_duration(s)
            .map_err(|e| format!("{e}; --hook-timeout takes seconds or e.g. 90s, 5m"))?,
    };
    if d.is_zero() || d > MAX_HOOK_TIMEOUT {
        return Err("--hook-timeout must be between 1s and 24h (e.g. 120s)".to_owned());
    }
    Ok(d)
}

impl HookArgs {
    /// Applies the flags to a certificate of the config file: each flag
    /// given wins over the certificate and `[defaults]`.
    pub(crate) fn apply(&self, cert: &mut CertificateConfig) {
        if let Some(h) = &self.pre_hook {
            cert.pre_hook = Some(h.clone());
        }
        if let Some(h) = &self.post_hook {
            cert.post_hook = Some(h.clone());
        }
        if let Some(h) = &self.deploy_hook {
            cert.deploy_hook = Some(h.clone());
        }
        if let Some(t) = self.hook_timeout {
            cert.hook_timeout = Some(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_take_seconds_or_durations_and_name_the_flag_when_wrong() {
        assert_eq!(parse_timeout("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        for bad in ["0", "2x", "25h", ""] {
            let e = parse_timeout(bad).expect_err(bad);
            assert!(e.contains("--hook-timeout"), "{bad}: {e}");
        }
        let e = non_empty("--pre-hook")("  ").expect_err("empty");
        assert!(e.contains("--pre-hook"), "{e}");
    }
}
