//! The client-side cap on the request rate per CA: a token bucket per
//! endpoint kind, shared by every order of a client.

use super::*;

/// A client-side cap on the rate of requests to a CA: a token bucket that
/// holds `burst` requests and refills at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequestRate {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests that may be sent at once after a quiet time.
    pub burst: u32,
}

/// The cap for a CA that is neither Let's Encrypt nor on a loopback
/// address: 20 requests per second (Let's Encrypt's and Buypass's long
/// standing per-endpoint figure), bursts of 40.
pub const DEFAULT_REQUEST_RATE: RequestRate = RequestRate {
    per_second: 20.0,
    burst: 40,
};

/// Let's Encrypt's published "overall requests" limits per IP address
/// (<https://letsencrypt.org/docs/rate-limits/>), per endpoint.
pub(in crate::acme) const LETSENCRYPT_RATES: [(Kind, RequestRate); 7] = [
    (Kind::Directory, rate(40.0, 40)),
    (Kind::NewNonce, rate(20.0, 10)),
    (Kind::NewAccount, rate(5.0, 15)),
    (Kind::NewOrder, rate(300.0, 200)),
    (Kind::Revoke, rate(10.0, 100)),
    (Kind::RenewalInfo, rate(1000.0, 100)),
    // Everything else under /acme/.
    (Kind::Fetch, rate(250.0, 125)),
];

pub(in crate::acme) const fn rate(per_second: f64, burst: u32) -> RequestRate {
    RequestRate { per_second, burst }
}

/// One token bucket, kept as its theoretical arrival time (GCRA): a
/// request may go when the bucket's time is at most `tolerance` ahead of
/// now; each request moves it on by `interval`.
#[derive(Debug)]
pub(in crate::acme) struct Bucket {
    pub(in crate::acme) interval: Duration,
    pub(in crate::acme) tolerance: Duration,
    pub(in crate::acme) tat: Mutex<Option<Instant>>,
}

impl Bucket {
    pub(in crate::acme) fn new(rate: RequestRate) -> Bucket {
        let per_second = if rate.per_second.is_finite() && rate.per_second > 0.0 {
            rate.per_second
        } else {
            1.0
        };
        let interval = Duration::from_secs_f64(1.0 / per_second);
        Bucket {
            interval,
            tolerance: interval.saturating_mul(rate.burst.saturating_sub(1)),
            tat: Mutex::new(None),
        }
    }

    /// Takes a token at `now`: how long to wait before sending.
    pub(in crate::acme) fn reserve(&self, now: Instant) -> Duration {
        let Ok(mut tat) = self.tat.lock() else {
            return Duration::ZERO;
        };
        let t = tat.map_or(now, |t| t.max(now));
        let wait = t
            .saturating_duration_since(now)
            .saturating_sub(self.tolerance);
        *tat = Some(t + self.interval);
        wait
    }
}

/// The request-rate cap of one client.
#[derive(Debug)]
pub(in crate::acme) enum RateCap {
    /// No cap (a CA on a loopback address, or set so).
    None,
    /// One bucket for every request.
    One(Bucket),
    /// A bucket per endpoint (Let's Encrypt); kinds not listed use the
    /// [`Kind::Fetch`] one.
    PerKind(HashMap<Kind, Bucket>),
}

impl RateCap {
    /// The default for the directory at `url`.
    pub(in crate::acme) fn for_directory(url: &str) -> RateCap {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = bare == "localhost"
            || bare.ends_with(".localhost")
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return RateCap::None;
        }
        if url == crate::acme::LETSENCRYPT || url == crate::acme::LETSENCRYPT_STAGING {
            return RateCap::PerKind(
                LETSENCRYPT_RATES
                    .iter()
                    .map(|(k, r)| (*k, Bucket::new(*r)))
                    .collect(),
            );
        }
        RateCap::One(Bucket::new(DEFAULT_REQUEST_RATE))
    }

    /// A cap of `rate` for every request, or none.
    pub(in crate::acme) fn uniform(rate: Option<RequestRate>) -> RateCap {
        rate.map_or(RateCap::None, |r| RateCap::One(Bucket::new(r)))
    }

    pub(in crate::acme) fn reserve(&self, kind: Kind, now: Instant) -> Duration {
        match self {
            RateCap::None => Duration::ZERO,
            RateCap::One(b) => b.reserve(now),
            RateCap::PerKind(map) => map
                .get(&kind.rate_class())
                .or_else(|| map.get(&Kind::Fetch))
                .map_or(Duration::ZERO, |b| b.reserve(now)),
        }
    }
}
