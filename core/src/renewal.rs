//! When a certificate is due for renewal, and why.
//!
//! Why this module exists: renewing too late breaks a site, renewing too
//! early (or all at once) wastes the CA's capacity and the operator's rate
//! limits. The decision is made here, in one place, for `run`, `renew` and
//! `list` alike:
//!
//! * **Expiry**: due when less than 1/3 of the lifetime is left, or less
//!   than `renew_before` when that is configured. A `renew_before` that is
//!   not shorter than the certificate's lifetime would make it due the
//!   moment it is issued, and renewed on every run: it is ignored for that
//!   certificate (the 1/3 rule applies) and [`Schedule::renew_before_ignored`]
//!   says so, for the agent to warn about.
//! * **ARI** ([RFC 9773](https://www.rfc-editor.org/rfc/rfc9773)): when the
//!   CA's directory offers `renewalInfo`, its suggested window for the
//!   certificate (identified by `base64url(AKI keyIdentifier)
//!   "." base64url(serial DER bytes)`, §4.1) is fetched, a time is picked
//!   uniformly at random inside it (§4.2, so that a CA's clients spread out)
//!   and kept while the window stays the same, and the CA is not asked
//!   again before its `Retry-After` (at most a day, six hours when it sends
//!   none). A failed fetch falls back to the expiry rule for this run.
//!
//! The certificate is due at the earlier of the two times. The result is
//! persisted in `lineage.toml` (`[renewal]`: `next_renewal`, `reason`,
//! `explanation_url`, the window and the next check), so that `certsmith
//! list` shows it and the next run need not ask the CA again.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use time::OffsetDateTime;

use crate::acme::{AcmeClient, RenewalInfo};
use crate::keys::KeyType;
use crate::store::{self, Lineage, RenewalRecord, Store};

/// How long to wait before asking the CA again when it sends no
/// `Retry-After` ([RFC 9773 §4.3.2](https://www.rfc-editor.org/rfc/rfc9773#section-4.3.2)
/// suggests six hours).
pub const DEFAULT_ARI_RETRY: Duration = Duration::from_secs(6 * 3600);
/// The longest `Retry-After` honoured: a CA may want to move a window
/// earlier (mass revocation), so certsmith checks at least daily.
pub const MAX_ARI_RETRY: Duration = Duration::from_secs(24 * 3600);

/// Why a certificate could not be inspected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewalError {
    /// The stored certificate cannot be read.
    #[error(transparent)]
    Read(#[from] crate::store::StoreError),
    /// The current version of a certificate cannot be served as it is:
    /// a file missing, empty or garbled, a key that is not the
    /// certificate's, a full chain that does not match. It is due; nothing
    /// is deleted.
    #[error("the current version of '{name}' is damaged: {reason}")]
    Damaged {
        /// The certificate name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The certificate does not parse.
    #[error("{what} is not a usable certificate: {reason}")]
    Parse {
        /// The file or a description.
        what: String,
        /// Why.
        reason: String,
    },
}

/// What the renewal logic needs to know about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    /// Serial number, lowercase hex without leading zeros.
    pub serial: String,
    /// notBefore.
    pub not_before: OffsetDateTime,
    /// notAfter.
    pub not_after: OffsetDateTime,
    /// The issuer's distinguished name (its common name when it has one).
    pub issuer: String,
    /// The RFC 9773 certificate identifier, when the certificate has an
    /// authority key identifier.
    pub ari_cert_id: Option<String>,
    /// The DER encoding.
    pub der: Vec<u8>,
}

/// Reads the first certificate of a PEM text (the leaf of a chain).
pub fn read_cert_pem(pem: &str, what: &str) -> Result<CertFacts, RenewalError> {
    let bad = |reason: String| RenewalError::Parse {
        what: what.to_owned(),
        reason,
    };
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| bad(format!("not PEM ({e})")))?;
    if block.label != "CERTIFICATE" {
        return Err(bad(format!("the PEM block is a {}", block.label)));
    }
    read_cert_der(&block.contents, what)
}

/// Reads a DER certificate.
pub fn read_cert_der(der: &[u8], what: &str) -> Result<CertFacts, RenewalError> {
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).map_err(|e| {
        RenewalError::Parse {
            what: what.to_owned(),
            reason: e.to_string(),
        }
    })?;
    let raw_serial = cert.tbs_certificate.raw_serial();
    let significant = raw_serial
        .iter()
        .position(|&b| b != 0)
        .map_or(&raw_serial[raw_serial.len().saturating_sub(1)..], |i| {
            &raw_serial[i..]
        });
    let serial: String = significant.iter().map(|b| format!("{b:02x}")).collect();
    let aki = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        });
    let ari_cert_id = aki.map(|k| {
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(k),
            URL_SAFE_NO_PAD.encode(raw_serial)
        )
    });
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map_or_else(|| cert.issuer().to_string(), str::to_owned);
    Ok(CertFacts {
        serial,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        issuer,
        ari_cert_id,
        der: der.to_vec(),
    })
}

/// Reads the current version of `name`, if there is one, and checks that
/// it can be served: the certificate parses, the key is its key, and the
/// full chain is the certificate followed by the chain
/// ([`RenewalError::Damaged`] otherwise).
pub fn read_current(store: &Store, name: &str) -> Result<Option<CertFacts>, RenewalError> {
    let damaged = |reason: String| RenewalError::Damaged {
        name: name.to_owned(),
        reason,
    };
    let current = match store.read_version(name, None) {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(None),
        Err(store::StoreError::Io { path, source, .. }) => {
            return Err(damaged(format!("cannot read {}: {source}", path.display())));
        }
        Err(e) => return Err(e.into()),
    };
    let what = match &current.dir {
        Some(dir) => dir.join(store::CERT_FILE).display().to_string(),
        None => format!("{name} version {}", current.version),
    };
    let facts =
        read_cert_pem(&current.files.cert_pem, &what).map_err(|e| damaged(e.to_string()))?;
    if let Some(reason) = damage(&current.files, &facts) {
        return Err(damaged(reason));
    }
    Ok(Some(facts))
}

/// What makes a stored set unusable, if anything.
fn damage(files: &store::CertFiles, facts: &CertFacts) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(&facts.der) else {
        return Some(format!("{} does not parse", store::CERT_FILE));
    };
    let public_key = &cert.public_key().subject_public_key.data;
    // The key, or for a certificate of the user's CSR, the key that CSR
    // certifies, must be the certificate's.
    let (file, matches) = match (&files.privkey_pem, &files.csr_pem) {
        (Some(key), _) => (
            store::PRIVKEY_FILE,
            crate::keys::key_matches(key, public_key),
        ),
        (None, Some(csr)) => (
            store::CSR_FILE,
            crate::keys::read_csr(csr.as_bytes())
                .and_then(|c| c.public_key())
                .map(|k| k.as_slice() == public_key.as_ref()),
        ),
        (None, None) => return Some(format!("{} is missing", store::PRIVKEY_FILE)),
    };
    match matches {
        Ok(true) => {}
        Ok(false) => return Some(format!("{file} is not the key of {}", store::CERT_FILE)),
        Err(e) => return Some(format!("{file}: {e}")),
    }
    let chain = match pem_certificates(&files.chain_pem) {
        Ok(c) => c,
        Err(reason) => return Some(format!("{}: {reason}", store::CHAIN_FILE)),
    };
    let full = match pem_certificates(&files.fullchain_pem) {
        Ok(c) => c,
        Err(reason) => return Some(format!("{}: {reason}", store::FULLCHAIN_FILE)),
    };
    let expected: Vec<&[u8]> = std::iter::once(facts.der.as_slice())
        .chain(chain.iter().map(Vec::as_slice))
        .collect();
    let got: Vec<&[u8]> = full.iter().map(Vec::as_slice).collect();
    (got != expected).then(|| {
        format!(
            "{} is not {} followed by {}",
            store::FULLCHAIN_FILE,
            store::CERT_FILE,
            store::CHAIN_FILE
        )
    })
}

/// The DER certificates of a PEM text; an error when a block is not a
/// certificate or does not parse, or text is left that is not PEM.
fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| format!("not PEM ({e})"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!("holds a {} block", block.label));
        }
        out.push(block.contents);
    }
    if out.is_empty() && !pem.trim().is_empty() {
        return Err("holds no certificate".to_owned());
    }
    Ok(out)
}

/// Why a certificate is renewed when it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RenewReason {
    /// Less than 1/3 of its lifetime is left.
    Expiry,
    /// Less than the configured `renew_before` is left.
    RenewBefore,
    /// The CA's suggested window (ARI) says so.
    Ari,
    /// The current version is damaged (see [`RenewalError::Damaged`]).
    Damaged,
}

impl RenewReason {
    /// The name stored in `lineage.toml` and shown by `list`.
    pub fn as_str(self) -> &'static str {
        match self {
            RenewReason::Expiry => "expiry",
            RenewReason::RenewBefore => "renew_before",
            RenewReason::Ari => "ari",
            RenewReason::Damaged => "damaged",
        }
    }

    fn parse(s: &str) -> Option<RenewReason> {
        [
            RenewReason::Expiry,
            RenewReason::RenewBefore,
            RenewReason::Ari,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// Whether `renew_before` can apply to a certificate valid from
/// `not_before` to `not_after`: it must be shorter than the lifetime.
pub fn renew_before_fits(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    renew_before: Duration,
) -> bool {
    let lifetime = (not_after - not_before).max(time::Duration::ZERO);
    time::Duration::try_from(renew_before).is_ok_and(|margin| margin < lifetime)
}

/// When the expiry rule makes a certificate due: `not_after - renew_before`,
/// or, without `renew_before` or when it is not shorter than the lifetime
/// (see [`renew_before_fits`]), when 1/3 of the lifetime is left.
pub fn expiry_time(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    renew_before: Option<Duration>,
) -> (OffsetDateTime, RenewReason) {
    match renew_before {
        Some(margin) if renew_before_fits(not_before, not_after, margin) => (
            not_after - time::Duration::try_from(margin).unwrap_or(time::Duration::MAX),
            RenewReason::RenewBefore,
        ),
        _ => {
            let lifetime = (not_after - not_before).max(time::Duration::ZERO);
            (not_after - lifetime / 3, RenewReason::Expiry)
        }
    }
}

/// A uniformly random duration in `[0, max]`.
pub fn random_below(max: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return Duration::ZERO;
    }
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(u64::from_le_bytes(bytes) % ms.saturating_add(1))
}

/// A uniformly random time in `[start, end]`
/// ([RFC 9773 §4.2](https://www.rfc-editor.org/rfc/rfc9773#section-4.2)).
pub fn pick_in_window(start: OffsetDateTime, end: OffsetDateTime) -> OffsetDateTime {
    let span = (end - start).max(time::Duration::ZERO);
    let span = Duration::try_from(span).unwrap_or(Duration::ZERO);
    start + random_below(span)
}

pub use crate::timefmt::{parse_time, rfc3339};

/// The outcome of [`schedule`].
#[derive(Clone, Debug)]
pub struct Schedule {
    /// When the certificate is due.
    pub next: OffsetDateTime,
    /// Why then.
    pub reason: RenewReason,
    /// What to persist in `lineage.toml`.
    pub record: RenewalRecord,
    /// Whether the CA was asked for renewal information this time.
    pub ari_fetched: bool,
    /// Why ARI could not be used this time, if it failed.
    pub ari_error: Option<String>,
    /// Whether the `renew_before` given was ignored because it is not
    /// shorter than the certificate's lifetime (the 1/3 rule applied).
    pub renew_before_ignored: bool,
}

impl Schedule {
    /// Whether it is due at `now`.
    pub fn is_due(&self, now: OffsetDateTime) -> bool {
        self.next <= now
    }
}

/// The stored ARI state of `previous` when it is about this certificate
/// and the CA asked not to be asked again yet.
fn reusable_ari(
    previous: Option<&RenewalRecord>,
    facts: &CertFacts,
    now: OffsetDateTime,
) -> Option<(RenewalInfo, OffsetDateTime)> {
    let p = previous?;
    if p.serial != facts.serial || p.ari_cert_id != facts.ari_cert_id {
        return None;
    }
    let next_check = parse_time(p.ari_next_check.as_deref()?)?;
    if next_check <= now {
        return None;
    }
    let info = RenewalInfo {
        start: parse_time(p.ari_window_start.as_deref()?)?,
        end: parse_time(p.ari_window_end.as_deref()?)?,
        explanation_url: p.explanation_url.clone(),
        retry_after: Some(SystemTime::from(next_check)),
    };
    let at = parse_time(p.ari_renewal_at.as_deref()?)?;
    Some((info, at))
}

/// Decides when the certificate `facts` describes is due, asking the CA
/// for renewal information through `client` when it offers it (and the
/// stored answer in `previous` may not be reused yet). Never fails: ARI
/// problems fall back to the expiry rule and are reported in
/// [`Schedule::ari_error`].
pub async fn schedule(
    client: Option<&AcmeClient>,
    facts: &CertFacts,
    previous: Option<&RenewalRecord>,
    renew_before: Option<Duration>,
    now: OffsetDateTime,
) -> Schedule {
    let (expiry_at, expiry_reason) = expiry_time(facts.not_before, facts.not_after, renew_before);
    let mut ari: Option<(RenewalInfo, OffsetDateTime, OffsetDateTime)> = None; // info, at, next check
    let mut ari_error = None;
    let mut ari_fetched = false;
    if let Some((info, at)) = reusable_ari(previous, facts, now) {
        let next_check = info.retry_after.map_or(now, OffsetDateTime::from);
        ari = Some((info, at, next_check));
    } else if let (Some(client), Some(cert_id)) = (client, facts.ari_cert_id.as_deref()) {
        match client.renewal_info(cert_id).await {
            Ok(Some(info)) => {
                ari_fetched = true;
                // Keep the time picked earlier while the window is the same.
                let same_window = previous.is_some_and(|p| {
                    p.serial == facts.serial
                        && p.ari_window_start.as_deref() == Some(&rfc3339(info.start))
                        && p.ari_window_end.as_deref() == Some(&rfc3339(info.end))
                });
                let kept = previous
                    .filter(|_| same_window)
                    .and_then(|p| p.ari_renewal_at.as_deref())
                    .and_then(parse_time);
                let at = kept.unwrap_or_else(|| pick_in_window(info.start, info.end));
                let wait = info
                    .retry_after
                    .and_then(|t| t.duration_since(SystemTime::from(now)).ok())
                    .unwrap_or(DEFAULT_ARI_RETRY)
                    .min(MAX_ARI_RETRY);
                let next_check =
                    now + time::Duration::try_from(wait).unwrap_or(time::Duration::ZERO);
                ari = Some((info, at, next_check));
            }
            Ok(None) => {}
            Err(e) => {
                log::warn!(
                    "could not fetch the renewal information (ARI) for serial {}: {e}; using the expiry rule",
                    facts.serial
                );
                ari_error = Some(e.to_string());
            }
        }
    }

    let (next, reason) = match &ari {
        Some((_, at, _)) if *at < expiry_at => (*at, RenewReason::Ari),
        _ => (expiry_at, expiry_reason),
    };
    let record = RenewalRecord {
        next_renewal: rfc3339(next),
        reason: reason.as_str().to_owned(),
        serial: facts.serial.clone(),
        ari_cert_id: facts.ari_cert_id.clone(),
        ari_window_start: ari.as_ref().map(|(i, _, _)| rfc3339(i.start)),
        ari_window_end: ari.as_ref().map(|(i, _, _)| rfc3339(i.end)),
        ari_renewal_at: ari.as_ref().map(|(_, at, _)| rfc3339(*at)),
        explanation_url: ari.as_ref().and_then(|(i, _, _)| i.explanation_url.clone()),
        ari_next_check: ari.as_ref().map(|(_, _, c)| rfc3339(*c)),
        checked_at: rfc3339(now),
    };
    Schedule {
        next,
        reason,
        record,
        ari_fetched,
        ari_error,
        renew_before_ignored: renew_before
            .is_some_and(|m| !renew_before_fits(facts.not_before, facts.not_after, m)),
    }
}

/// When `lineage`'s current version (`facts`) is due, from what is stored:
/// the `[renewal]` record when it is about this version, else the expiry
/// rule. For `certsmith list`, which does not contact the CA.
pub fn stored_schedule(lineage: &Lineage, facts: &CertFacts) -> (OffsetDateTime, RenewReason) {
    if let Some(r) = &lineage.renewal
        && r.serial == facts.serial
        && let (Some(t), Some(reason)) =
            (parse_time(&r.next_renewal), RenewReason::parse(&r.reason))
    {
        return (t, reason);
    }
    let margin = lineage
        .renew_before
        .as_deref()
        .and_then(|s| crate::config::parse_duration(s).ok());
    expiry_time(facts.not_before, facts.not_after, margin)
}

/// How a stored certificate differs from what is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// The set of domains changed.
    Domains {
        /// Stored.
        from: Vec<String>,
        /// Asked for.
        to: Vec<String>,
    },
    /// The key type changed.
    KeyType {
        /// Stored.
        from: String,
        /// Asked for.
        to: String,
    },
    /// The CA changed.
    Server {
        /// Stored.
        from: String,
        /// Asked for.
        to: String,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Domains { from, to } => {
                write!(
                    f,
                    "domains changed from {} to {}",
                    from.join(","),
                    to.join(",")
                )
            }
            Change::KeyType { from, to } => write!(f, "key type changed from {from} to {to}"),
            Change::Server { from, to } => write!(f, "CA changed from {from} to {to}"),
        }
    }
}

/// What changed between `lineage` and the wanted domains, key type and
/// server. Domain order does not count; duplicates were removed before.
pub fn changes(
    lineage: &Lineage,
    domains: &[String],
    key_type: KeyType,
    server: &str,
) -> Vec<Change> {
    let mut out = Vec::new();
    let mut a: Vec<&String> = lineage.domains.iter().collect();
    let mut b: Vec<&String> = domains.iter().collect();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    if a != b {
        out.push(Change::Domains {
            from: lineage.domains.clone(),
            to: domains.to_vec(),
        });
    }
    if lineage.key_type != key_type.as_str() {
        out.push(Change::KeyType {
            from: lineage.key_type.clone(),
            to: key_type.as_str().to_owned(),
        });
    }
    if lineage.server != server {
        out.push(Change::Server {
            from: lineage.server.clone(),
            to: server.to_owned(),
        });
    }
    out
}

/// The state `certsmith list` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CertState {
    /// In use and not yet due.
    Valid,
    /// Due for renewal.
    Due,
    /// Past notAfter.
    Expired,
    /// Revoked (the lineage says so).
    Revoked,
    /// Retired: no longer wanted, never renewed (the lineage says so).
    Retired,
}

impl CertState {
    /// The name shown.
    pub fn as_str(self) -> &'static str {
        match self {
            CertState::Valid => "valid",
            CertState::Due => "due",
            CertState::Expired => "expired",
            CertState::Revoked => "revoked",
            CertState::Retired => "retired",
        }
    }
}

/// The state of `lineage`'s current version at `now`.
pub fn state(lineage: &Lineage, facts: &CertFacts, now: OffsetDateTime) -> CertState {
    if lineage.retired.is_some() {
        return CertState::Retired;
    }
    if lineage
        .revoked
        .as_ref()
        .is_some_and(|r| r.serial == facts.serial)
    {
        return CertState::Revoked;
    }
    if facts.not_after <= now {
        return CertState::Expired;
    }
    let (next, _) = stored_schedule(lineage, facts);
    if next <= now {
        CertState::Due
    } else {
        CertState::Valid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn cert_with(
        serial: &[u8],
        aki: Option<&[u8]>,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> String {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test Issuer");
        if let Some(aki) = aki {
            ca_params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(aki.to_vec());
        }
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
        p.serial_number = Some(rcgen::SerialNumber::from(serial.to_vec()));
        p.not_before = not_before;
        p.not_after = not_after;
        p.use_authority_key_identifier_extension = aki.is_some();
        p.signed_by(&key, &issuer).expect("cert").pem()
    }

    #[test]
    fn ari_cert_id_is_aki_dot_serial() {
        // RFC 9773 §4.1 example: AKI 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4,
        // serial 00:87:65:43:21 -> aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE
        let aki = [
            0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3, 0x7B, 0x84, 0x7B, 0xA0,
            0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4,
        ];
        let pem = cert_with(
            &[0x00, 0x87, 0x65, 0x43, 0x21],
            Some(&aki),
            datetime!(2025-01-01 0:00 UTC),
            datetime!(2025-04-01 0:00 UTC),
        );
        let f = read_cert_pem(&pem, "test").expect("parses");
        assert_eq!(
            f.ari_cert_id.as_deref(),
            Some("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
        );
        assert_eq!(f.serial, "87654321");
        assert_eq!(f.issuer, "Test Issuer");
        let no_aki = cert_with(
            &[1],
            None,
            datetime!(2025-01-01 0:00 UTC),
            datetime!(2025-04-01 0:00 UTC),
        );
        assert_eq!(
            read_cert_pem(&no_aki, "t").expect("parses").ari_cert_id,
            None
        );
        assert!(read_cert_pem("nope", "t").is_err());
    }

    #[test]
    fn expiry_rule() {
        let nb = datetime!(2025-01-01 0:00 UTC);
        let na = datetime!(2025-04-01 0:00 UTC); // 90 days
        let (t, r) = expiry_time(nb, na, None);
        assert_eq!(r, RenewReason::Expiry);
        assert_eq!(t, datetime!(2025-03-02 0:00 UTC)); // 30 days before
        let (t, r) = expiry_time(nb, na, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(r, RenewReason::RenewBefore);
        assert_eq!(t, datetime!(2025-03-25 0:00 UTC));
        // A margin as long as the lifetime or longer would make it due
        // from the start, and renew it on every run: the 1/3 rule applies.
        for days in [90, 365] {
            let margin = Duration::from_secs(days * 86_400);
            assert!(!renew_before_fits(nb, na, margin));
            let (t, r) = expiry_time(nb, na, Some(margin));
            assert_eq!(r, RenewReason::Expiry);
            assert_eq!(t, datetime!(2025-03-02 0:00 UTC));
        }
        assert!(renew_before_fits(nb, na, Duration::from_secs(89 * 86_400)));
    }

    #[test]
    fn window_pick_is_inside() {
        let s = datetime!(2025-03-01 0:00 UTC);
        let e = datetime!(2025-03-03 0:00 UTC);
        for _ in 0..200 {
            let t = pick_in_window(s, e);
            assert!(t >= s && t <= e, "{t}");
        }
        assert_eq!(pick_in_window(e, s), e, "an empty window gives its start");
        assert!(random_below(Duration::from_secs(5)) <= Duration::from_secs(5));
        assert_eq!(random_below(Duration::ZERO), Duration::ZERO);
    }

    fn facts() -> CertFacts {
        CertFacts {
            serial: "abcd".into(),
            not_before: datetime!(2025-01-01 0:00 UTC),
            not_after: datetime!(2025-04-01 0:00 UTC),
            issuer: "X".into(),
            ari_cert_id: Some("aa.bb".into()),
            der: vec![],
        }
    }

    #[tokio::test]
    async fn without_ari_the_expiry_rule_decides() {
        let now = datetime!(2025-02-01 0:00 UTC);
        let s = schedule(None, &facts(), None, None, now).await;
        assert_eq!(s.reason, RenewReason::Expiry);
        assert!(!s.is_due(now));
        assert!(s.is_due(datetime!(2025-03-02 0:00 UTC)));
        assert_eq!(s.record.next_renewal, "2025-03-02T00:00:00Z");
        assert_eq!(s.record.reason, "expiry");
        assert_eq!(s.record.ari_next_check, None);
    }

    #[tokio::test]
    async fn stored_ari_is_reused_until_retry_after() {
        let now = datetime!(2025-02-01 0:00 UTC);
        let previous = RenewalRecord {
            next_renewal: "2025-02-10T00:00:00Z".into(),
            reason: "ari".into(),
            serial: "abcd".into(),
            ari_cert_id: Some("aa.bb".into()),
            ari_window_start: Some("2025-02-09T00:00:00Z".into()),
            ari_window_end: Some("2025-02-11T00:00:00Z".into()),
            ari_renewal_at: Some("2025-02-10T00:00:00Z".into()),
            explanation_url: Some("https://ca/why".into()),
            ari_next_check: Some("2025-02-01T06:00:00Z".into()),
            checked_at: "2025-02-01T00:00:00Z".into(),
        };
        let s = schedule(None, &facts(), Some(&previous), None, now).await;
        assert_eq!(s.reason, RenewReason::Ari);
        assert_eq!(s.next, datetime!(2025-02-10 0:00 UTC));
        assert_eq!(s.record.explanation_url.as_deref(), Some("https://ca/why"));
        assert!(!s.ari_fetched);
        // After the retry time it is not reused (and without a client, the
        // expiry rule decides).
        let later = datetime!(2025-02-01 7:00 UTC);
        let s = schedule(None, &facts(), Some(&previous), None, later).await;
        assert_eq!(s.reason, RenewReason::Expiry);
        // A record about another serial is never reused.
        let mut other = previous.clone();
        other.serial = "ffff".into();
        let s = schedule(None, &facts(), Some(&other), None, now).await;
        assert_eq!(s.reason, RenewReason::Expiry);
    }

    #[test]
    fn changes_ignore_order() {
        let l = Lineage {
            domains: vec!["a.example".into(), "b.example".into()],
            key_type: "ec-p256".into(),
            server: "https://ca/dir".into(),
            ..Lineage::default()
        };
        let same = changes(
            &l,
            &["b.example".into(), "a.example".into()],
            KeyType::EcP256,
            "https://ca/dir",
        );
        assert!(same.is_empty());
        let c = changes(&l, &["a.example".into()], KeyType::EcP384, "https://ca/dir");
        assert_eq!(c.len(), 2);
        assert!(c[0].to_string().starts_with("domains changed"), "{}", c[0]);
        assert_eq!(c[1].to_string(), "key type changed from ec-p256 to ec-p384");
    }

    #[test]
    fn states() {
        let f = facts();
        let mut l = Lineage::default();
        assert_eq!(
            state(&l, &f, datetime!(2025-02-01 0:00 UTC)),
            CertState::Valid
        );
        assert_eq!(
            state(&l, &f, datetime!(2025-03-10 0:00 UTC)),
            CertState::Due
        );
        assert_eq!(
            state(&l, &f, datetime!(2025-05-01 0:00 UTC)),
            CertState::Expired
        );
        l.renew_before = Some("60d".into());
        assert_eq!(
            state(&l, &f, datetime!(2025-02-01 0:00 UTC)),
            CertState::Due
        );
        l.revoked = Some(crate::store::RevocationRecord {
            serial: "abcd".into(),
            reason: "superseded".into(),
            at: "2025-02-01T00:00:00Z".into(),
        });
        assert_eq!(
            state(&l, &f, datetime!(2025-02-01 0:00 UTC)),
            CertState::Revoked
        );
    }
}
