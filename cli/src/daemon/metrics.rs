//! What `certsmith daemon` serves on `/metrics`: the Prometheus text
//! format 0.0.4, written by hand (a handful of series do not need a
//! metrics library).
//!
//! Why this module exists: the daemon's loop and its progress events
//! count what happened (orders by result, solver latency); the store says
//! where each certificate stands now; `core::metrics` counts what the CA
//! answered. A scrape reads the store afresh, so the certificate gauges
//! are never older than the scrape.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use certsmith_core::progress::ProgressEvent;
use certsmith_core::renewal;
use certsmith_core::store::{Store, StoreError};
use time::OffsetDateTime;

/// The states `certsmith_certificates` reports, always all of them (a
/// state without certificates is 0, not absent).
pub(crate) const STATES: [&str; 8] = [
    "valid", "due", "expired", "revoked", "retired", "damaged", "missing", "failed",
];

/// The results `certsmith_orders_total` counts.
const RESULTS: [&str; 3] = ["issued", "renewed", "failed"];

/// Upper bounds (seconds) of the solver latency histogram's buckets.
const BUCKETS: [f64; 13] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Default)]
struct Inner {
    orders: BTreeMap<&'static str, u64>,
    solver: BTreeMap<String, Histogram>,
    /// When each (certificate, identifier) had its challenge presented.
    presented: HashMap<(String, String), Instant>,
    /// The solver of each (certificate, identifier) being ordered.
    solvers: HashMap<(String, String), String>,
    /// The certificates of the config in use.
    configured: Vec<String>,
    /// Those whose last order failed (retried with backoff).
    failed: BTreeSet<String>,
    rounds: u64,
    last_round: Option<OffsetDateTime>,
}

/// The daemon's counters, shared by its loop, its progress tap and its
/// HTTP server.
#[derive(Default)]
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
}

/// One certificate of the config as a scrape sees it.
#[derive(Debug)]
pub(crate) struct CertStatus {
    pub(crate) name: String,
    pub(crate) state: &'static str,
    /// Seconds to notAfter (negative once expired), when there is a
    /// current version.
    pub(crate) expiry_seconds: Option<i64>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The certificates of the config now in use.
    pub(crate) fn set_configured(&self, names: Vec<String>) {
        let mut i = self.lock();
        i.failed.retain(|n| names.contains(n));
        i.configured = names;
    }

    /// The certificates of the config now in use, and those whose last
    /// order failed.
    pub(crate) fn configured(&self) -> (Vec<String>, BTreeSet<String>) {
        let i = self.lock();
        (i.configured.clone(), i.failed.clone())
    }

    /// An order's result (`issued`, `renewed` or `failed`).
    pub(crate) fn order(&self, name: &str, result: &str) {
        let mut i = self.lock();
        let key = RESULTS.iter().find(|r| **r == result).copied();
        if let Some(key) = key {
            *i.orders.entry(key).or_default() += 1;
        }
        if result == "failed" {
            i.failed.insert(name.to_owned());
        } else {
            i.failed.remove(name);
        }
    }

    /// A certificate whose plan could not be made (counted as failed, not
    /// as an order).
    pub(crate) fn plan_failed(&self, name: &str) {
        self.lock().failed.insert(name.to_owned());
    }

    /// The solver that answers identifier `domain` of certificate `name`
    /// in the orders about to run.
    pub(crate) fn solver_of(&self, name: &str, domain: &str, solver: &str) {
        self.lock()
            .solvers
            .insert((name.to_owned(), domain.to_owned()), solver.to_owned());
    }

    /// A round of the loop ended.
    pub(crate) fn round_done(&self) {
        let mut i = self.lock();
        i.rounds += 1;
        i.last_round = Some(OffsetDateTime::now_utc());
    }

    /// Notes what a progress event says about solver latency: from a
    /// challenge presented to its identifier validated (or refused, or
    /// the response removed, whichever comes first).
    pub(crate) fn observe(&self, event: &ProgressEvent) {
        match event {
            ProgressEvent::ChallengePresented { name, domain, .. } => {
                self.lock()
                    .presented
                    .insert((name.clone(), domain.clone()), Instant::now());
            }
            ProgressEvent::Valid { name, domain }
            | ProgressEvent::Invalid { name, domain, .. }
            | ProgressEvent::CleanedUp { name, domain, .. }
            | ProgressEvent::CleanupFailed { name, domain, .. } => {
                let mut i = self.lock();
                let key = (name.clone(), domain.clone());
                if let Some(started) = i.presented.remove(&key) {
                    let solver = i
                        .solvers
                        .get(&key)
                        .cloned()
                        .unwrap_or_else(|| "unknown".to_owned());
                    i.solver
                        .entry(solver)
                        .or_default()
                        .observe(started.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
    }

    /// The text of `/metrics`, with `certs` as the store says now.
    pub(crate) fn render(&self, certs: &[CertStatus]) -> String {
        let i = self.lock();
        let mut out = String::new();
        header(
            &mut out,
            "certsmith_certificates",
            "gauge",
            "Certificates of the config by state (failed: the last order failed and is retried with backoff).",
        );
        for state in STATES {
            let n = certs.iter().filter(|c| c.state == state).count();
            let _ = writeln!(out, "certsmith_certificates{{state=\"{state}\"}} {n}");
        }
        header(
            &mut out,
            "certsmith_certificate_expiry_seconds",
            "gauge",
            "Seconds until the notAfter of each certificate's current version.",
        );
        for c in certs {
            if let Some(s) = c.expiry_seconds {
                let _ = writeln!(
                    out,
                    "certsmith_certificate_expiry_seconds{{name=\"{}\"}} {s}",
                    escape(&c.name)
                );
            }
        }
        header(
            &mut out,
            "certsmith_orders_total",
            "counter",
            "Orders placed by this daemon, by result.",
        );
        for r in RESULTS {
            let n = i.orders.get(r).copied().unwrap_or(0);
            let _ = writeln!(out, "certsmith_orders_total{{result=\"{r}\"}} {n}");
        }
        header(
            &mut out,
            "certsmith_solver_seconds",
            "histogram",
            "Seconds from a challenge presented to its identifier validated, refused or cleaned up, by solver.",
        );
        for (solver, h) in &i.solver {
            let solver = escape(solver);
            let mut cumulative = 0;
            for (le, n) in BUCKETS.iter().zip(h.counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "certsmith_solver_seconds_bucket{{solver=\"{solver}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "certsmith_solver_seconds_bucket{{solver=\"{solver}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "certsmith_solver_seconds_sum{{solver=\"{solver}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "certsmith_solver_seconds_count{{solver=\"{solver}\"}} {}",
                h.count
            );
        }
        let ca = certsmith_core::metrics::ca_requests();
        header(
            &mut out,
            "certsmith_ca_requests_total",
            "counter",
            "HTTP requests to the CA by response status (every attempt; \"none\": no response).",
        );
        for (status, n) in &ca.by_status {
            let _ = writeln!(
                out,
                "certsmith_ca_requests_total{{status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "certsmith_ca_requests_total{{status=\"none\"}} {}",
            ca.no_response
        );
        header(
            &mut out,
            "certsmith_daemon_rounds_total",
            "counter",
            "Rounds of the daemon's loop completed.",
        );
        let _ = writeln!(out, "certsmith_daemon_rounds_total {}", i.rounds);
        header(
            &mut out,
            "certsmith_daemon_last_round_timestamp_seconds",
            "gauge",
            "When the last round of the loop ended (Unix time).",
        );
        let last = i.last_round.map_or(0, OffsetDateTime::unix_timestamp);
        let _ = writeln!(out, "certsmith_daemon_last_round_timestamp_seconds {last}");
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Where each of `names` stands in `store` at `now`: `failed` for those in
/// `failed`, `missing` without a current version; an error when the store
/// cannot be read.
pub(crate) fn survey(
    store: &Store,
    names: &[String],
    failed: &BTreeSet<String>,
    now: OffsetDateTime,
) -> Result<Vec<CertStatus>, StoreError> {
    let mut out = Vec::new();
    for name in names {
        let lineage = store.load_lineage(name)?;
        let facts = renewal::read_current(store, name);
        let expiry_seconds = match &facts {
            Ok(Some(f)) => Some((f.not_after - now).whole_seconds()),
            _ => None,
        };
        let state = match (&lineage, &facts) {
            _ if failed.contains(name) => "failed",
            (Some(l), Ok(Some(f))) => renewal::state(l, f, now).as_str(),
            (_, Err(renewal::RenewalError::Damaged { .. })) => "damaged",
            (Some(l), _) if l.retired.is_some() => "retired",
            _ => "missing",
        };
        out.push(CertStatus {
            name: name.clone(),
            state,
            expiry_seconds,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::ChallengeType;

    #[test]
    fn renders_every_family_with_help_and_type() {
        let m = Metrics::default();
        m.order("a", "issued");
        m.order("b", "failed");
        m.solver_of("a", "a.test", "webroot");
        m.observe(&ProgressEvent::ChallengePresented {
            name: "a".into(),
            domain: "a.test".into(),
            challenge: ChallengeType::Http01,
        });
        m.observe(&ProgressEvent::Valid {
            name: "a".into(),
            domain: "a.test".into(),
        });
        let certs = [CertStatus {
            name: "a\"b".into(),
            state: "valid",
            expiry_seconds: Some(42),
        }];
        let text = m.render(&certs);
        for family in [
            "certsmith_certificates",
            "certsmith_certificate_expiry_seconds",
            "certsmith_orders_total",
            "certsmith_solver_seconds",
            "certsmith_ca_requests_total",
        ] {
            assert!(text.contains(&format!("# HELP {family} ")), "{text}");
            assert!(text.contains(&format!("# TYPE {family} ")), "{text}");
        }
        assert!(text.contains("certsmith_certificates{state=\"valid\"} 1\n"));
        assert!(text.contains("certsmith_certificates{state=\"missing\"} 0\n"));
        assert!(text.contains("certsmith_certificate_expiry_seconds{name=\"a\\\"b\"} 42\n"));
        assert!(text.contains("certsmith_orders_total{result=\"issued\"} 1\n"));
        assert!(text.contains("certsmith_orders_total{result=\"failed\"} 1\n"));
        assert!(
            text.contains("certsmith_solver_seconds_bucket{solver=\"webroot\",le=\"+Inf\"} 1\n")
        );
        assert!(text.contains("certsmith_solver_seconds_count{solver=\"webroot\"} 1\n"));
        assert_eq!(m.configured().1.len(), 1, "b failed");
    }
}
