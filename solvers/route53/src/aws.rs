//! The Route53 client: credentials, certsmith's HTTP client (see
//! [`crate::http`]), one retry policy bounded by the call's deadline, and the
//! translation of AWS errors into certsmith's classes.
//!
//! The SDK's own retries are off. Its standard retry strategy knows nothing
//! of the deadline the host gave the call, and a change batch that failed
//! because the record set moved under it must be *recomputed* (read again),
//! not resent. So every request goes through [`Aws::call`], which retries
//! throttling (`Throttling`, `PriorRequestNotComplete`, HTTP 429), 5xx and
//! transport failures with the plugin SDK's [`retry`] (equal jitter: every
//! caller of one account shares Route53's 5 requests per second) for as long
//! as the deadline allows, and hands everything else to the caller
//! classified. [`retry_until`] is the same loop for the solver's own
//! repeats (a change recomputed after a race, `GetChange` until `INSYNC`).

use std::error::Error as StdError;
use std::sync::Mutex;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_route53::Client;
use aws_sdk_route53::config::{Credentials, ProvideCredentials, Region};
use aws_sdk_route53::error::{ProvideErrorMetadata, SdkError};
use certsmith_plugin_api::sdk::{Backoff, retry};
use certsmith_plugin_api::{Deadline, ErrorKind, PluginError};

use crate::Settings;
use crate::http::HostHttpClient;

/// What the solver's credentials must allow; part of every auth error.
pub(crate) const PERMISSIONS: &str = "route53:ChangeResourceRecordSets, \
route53:ListResourceRecordSets, route53:GetChange and route53:ListHostedZonesByName \
(the last only without hosted_zone_id)";

/// First backoff step; doubled per attempt up to [`BACKOFF_CAP`], jittered.
const BACKOFF_BASE: Duration = Duration::from_millis(400);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// No wait starts that would leave less than this before the deadline, so
/// the caller gets the real reason instead of the SDK's generic timeout.
pub(crate) const DEADLINE_MARGIN: Duration = Duration::from_millis(750);

/// The SDK's limits on connecting and on one attempt of a request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// The policy of every retry here: `attempts` tries at most (`u32::MAX`:
/// until the deadline), waits from 400 ms doubling to 10 s with equal
/// jitter, and [`DEADLINE_MARGIN`] kept free.
pub(crate) fn backoff(attempts: u32) -> Backoff {
    Backoff::new(attempts, BACKOFF_BASE, BACKOFF_CAP)
        .with_reserve(DEADLINE_MARGIN)
        .with_equal_jitter()
}

/// What one attempt under [`retry_until`] asks for.
pub(crate) enum Try<E> {
    /// Try again after a wait, if attempts and the deadline allow; the
    /// error (retryable) is the result otherwise.
    Again(PluginError),
    /// Stop now with this.
    Stop(E),
}

/// How [`retry_until`] ended without a value.
#[derive(Debug)]
pub(crate) enum GaveUp<E> {
    /// Out of attempts or of time: the last [`Try::Again`] error (or the
    /// SDK's "deadline passed" error).
    Again(PluginError),
    /// An attempt said [`Try::Stop`].
    Stop(E),
}

/// Runs `attempt` under the SDK's [`retry`] with `backoff`, retrying only
/// what it returns as [`Try::Again`]. A [`Try::Stop`] value travels beside
/// the SDK's loop (which only knows `PluginError`) and is handed back as it
/// was.
pub(crate) async fn retry_until<T, E, F, Fut>(
    deadline: &Deadline,
    backoff: Backoff,
    mut attempt: F,
) -> Result<T, GaveUp<E>>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, Try<E>>>,
{
    let stopped: Mutex<Option<E>> = Mutex::new(None);
    let result = retry(*deadline, backoff, |left| {
        let fut = attempt(left);
        let stopped = &stopped;
        async move {
            match fut.await {
                Ok(v) => Ok(v),
                Err(Try::Again(mut e)) => {
                    e.retryable = true;
                    Err(e)
                }
                Err(Try::Stop(e)) => {
                    *stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    // Not retryable: ends the SDK's loop; replaced below.
                    Err(PluginError::internal("stopped"))
                }
            }
        }
    })
    .await;
    match result {
        Ok(v) => Ok(v),
        Err(e) => match stopped.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(stop) => Err(GaveUp::Stop(stop)),
            None => Err(GaveUp::Again(e)),
        },
    }
}

/// Error codes that mean the credentials, the signature or the permissions
/// were refused.
const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "AuthFailure",
    "ExpiredToken",
    "ExpiredTokenException",
    "IncompleteSignature",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "MissingAuthenticationToken",
    "NotAuthorizedException",
    "RequestExpired",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
];

/// Error codes that mean "slow down". `PriorRequestNotComplete` is
/// Route53's answer to a change sent while an earlier one to the same
/// record set is still being applied.
const THROTTLE_CODES: &[&str] = &[
    "PriorRequestNotComplete",
    "RequestLimitExceeded",
    "RequestThrottled",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
];

const TRANSIENT_CODES: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "RequestTimeout",
    "ServiceUnavailable",
];

/// Why a request failed, once retries are over.
#[derive(Debug)]
pub(crate) enum Failure {
    /// `InvalidChangeBatch` because the record set is not what the batch
    /// assumed (changed by someone else since we read it): read it again.
    Race(String),
    /// Anything else, ready for the host.
    Fatal(PluginError),
}

impl From<Failure> for PluginError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Race(msg) => PluginError::transient(format!(
                "Route53 refused the change because the record set changed meanwhile: {msg}"
            )),
            Failure::Fatal(e) => e,
        }
    }
}

enum Class {
    Throttled(String),
    Transient(String),
    Race(String),
    Fatal(PluginError),
}

/// A Route53 client and where its credentials come from (for messages).
#[derive(Debug)]
pub(crate) struct Aws {
    pub(crate) client: Client,
    /// e.g. "the access_key_id/secret_access_key options".
    creds_source: String,
}

impl Aws {
    /// Builds the client. For the standard chain the credentials are
    /// resolved once here, so that "no credentials anywhere" is reported as
    /// such, not as a failed request.
    pub(crate) async fn connect(s: &Settings) -> Result<Aws, PluginError> {
        // One client for Route53 and the credential providers (STS, ECS,
        // EC2 metadata), which take theirs from the loader.
        let http = HostHttpClient::new(ATTEMPT_TIMEOUT);
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http.clone())
            .region(Region::new(s.region.clone()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            );
        if let Some(p) = &s.profile {
            loader = loader.profile_name(p);
        }
        let creds_source = match (&s.static_keys, &s.profile) {
            (Some(_), _) => "the access_key_id/secret_access_key options".to_owned(),
            (None, Some(p)) => format!("the AWS credential chain with profile {p:?}"),
            (None, None) => "the AWS credential chain".to_owned(),
        };
        if let Some(k) = &s.static_keys {
            loader = loader.credentials_provider(Credentials::new(
                k.access_key_id.clone(),
                k.secret_access_key.expose().to_owned(),
                k.session_token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "certsmith-route53-options",
            ));
        }
        let sdk = loader.load().await;
        if s.static_keys.is_none() {
            let provider = sdk.credentials_provider().ok_or_else(|| {
                PluginError::internal("aws-config produced no credentials provider")
            })?;
            provider
                .provide_credentials()
                .await
                .map_err(|e| credentials_error(&e, &creds_source))?;
        }
        // The endpoint override is Route53's only: STS (web identity) and
        // the metadata services keep theirs.
        let mut conf = aws_sdk_route53::config::Builder::from(&sdk).http_client(http);
        if let Some(url) = &s.endpoint_url {
            conf = conf.endpoint_url(url);
        }
        Ok(Aws {
            client: Client::from_conf(conf.build()),
            creds_source,
        })
    }

    /// Runs one request (`send` builds and sends it afresh each time),
    /// retrying throttling and transient failures until `deadline`.
    pub(crate) async fn call<T, E, Fut>(
        &self,
        deadline: &Deadline,
        op: &'static str,
        mut send: impl FnMut() -> Fut,
    ) -> Result<T, Failure>
    where
        Fut: Future<Output = Result<T, SdkError<E>>>,
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let result = retry_until(deadline, backoff(u32::MAX), |left| {
            let sent = tokio::time::timeout(left, send());
            async move {
                let err = match sent.await {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(e)) => e,
                    Err(_) => {
                        return Err(Try::Again(PluginError::transient(format!(
                            "Route53 {op} got no answer before the call's deadline"
                        ))));
                    }
                };
                match self.classify(op, &err) {
                    Class::Throttled(msg) => Err(Try::Again(PluginError::rate_limited(msg, None))),
                    Class::Transient(msg) => Err(Try::Again(PluginError::transient(msg))),
                    Class::Race(msg) => Err(Try::Stop(Failure::Race(msg))),
                    Class::Fatal(e) => Err(Try::Stop(Failure::Fatal(e))),
                }
            }
        })
        .await;
        match result {
            Ok(v) => Ok(v),
            Err(GaveUp::Stop(f)) => Err(f),
            // Attempts are unlimited: only the deadline ends the retries.
            Err(GaveUp::Again(e)) if e.kind == ErrorKind::RateLimited => {
                Err(Failure::Fatal(PluginError::rate_limited(
                    format!(
                        "{}; Route53 kept throttling until the call's deadline (Route53 \
                         allows 5 requests per second per account: other tools using the \
                         same account compete for them)",
                        e.message
                    ),
                    None,
                )))
            }
            Err(GaveUp::Again(e)) => Err(Failure::Fatal(PluginError::transient(format!(
                "{}; retried until the call's deadline",
                e.message
            )))),
        }
    }

    fn classify<E>(&self, op: &str, err: &SdkError<E>) -> Class
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        match err {
            SdkError::ServiceError(ctx) => {
                let status = ctx.raw().status().as_u16();
                let e = ctx.err();
                match e.code() {
                    Some(code) => self.classify_service(op, status, Some(code), e.message()),
                    // Not Route53's `<ErrorResponse><Error>` shape (moto,
                    // LocalStack, a proxy): take the first Code/Message.
                    None => {
                        let body = ctx.raw().body().bytes().unwrap_or_default();
                        let code = xml_text(body, "Code");
                        let message = xml_text(body, "Message");
                        self.classify_service(
                            op,
                            status,
                            code.as_deref(),
                            message.as_deref().or(e.message()),
                        )
                    }
                }
            }
            SdkError::ResponseError(ctx) => {
                let status = ctx.raw().status().as_u16();
                self.classify_service(op, status, None, Some("an unreadable response"))
            }
            SdkError::TimeoutError(_) => Class::Transient(format!("Route53 {op} timed out")),
            SdkError::DispatchFailure(d) if d.is_user() => Class::Fatal(PluginError::config(
                format!("Route53 {op} could not be sent: {}", error_chain(err)),
            )),
            // The host could not send it at all (none attached, a malformed
            // answer): retrying will not help.
            SdkError::DispatchFailure(d) if d.is_other() => Class::Fatal(PluginError::internal(
                format!("Route53 {op} could not be sent: {}", error_chain(err)),
            )),
            SdkError::DispatchFailure(_) => Class::Transient(format!(
                "Route53 {op} could not reach the endpoint: {}",
                error_chain(err)
            )),
            _ => Class::Fatal(PluginError::internal(format!(
                "Route53 {op} failed: {}",
                error_chain(err)
            ))),
        }
    }

    fn classify_service(
        &self,
        op: &str,
        status: u16,
        code: Option<&str>,
        message: Option<&str>,
    ) -> Class {
        let code = code.unwrap_or_default();
        let message = message.unwrap_or_default();
        let what = match (code.is_empty(), message.is_empty()) {
            (false, false) => format!("{code}: {message}"),
            (false, true) => code.to_owned(),
            (true, false) => format!("HTTP {status}: {message}"),
            (true, true) => format!("HTTP {status} without an error code"),
        };
        let source = &self.creds_source;
        if THROTTLE_CODES.contains(&code) || status == 429 {
            return Class::Throttled(format!("Route53 {op}: {what}"));
        }
        if code == "AccessDenied" || code == "AccessDeniedException" {
            return Class::Fatal(PluginError::auth(format!(
                "AWS rejected the credentials for {op} ({what}); they come from {source} and \
                 need {PERMISSIONS}"
            )));
        }
        if AUTH_CODES.contains(&code) || status == 401 || status == 403 {
            return Class::Fatal(PluginError::auth(format!(
                "AWS rejected the credentials ({what}); they come from {source}: check the \
                 access key and its secret (and the clock, for RequestExpired). The Route53 \
                 solver needs {PERMISSIONS}"
            )));
        }
        if code == "NoSuchHostedZone" {
            return Class::Fatal(PluginError::not_found(format!(
                "Route53 {op}: {what}; check hosted_zone_id, or leave it unset to look the \
                 zone up by name"
            )));
        }
        if code == "InvalidChangeBatch" {
            let m = message.to_ascii_lowercase();
            if m.contains("not found") || m.contains("do not match") || m.contains("already exists")
            {
                return Class::Race(what);
            }
            return Class::Fatal(PluginError::config(format!(
                "Route53 refused the change: {what}"
            )));
        }
        if TRANSIENT_CODES.contains(&code) || status >= 500 {
            return Class::Transient(format!("Route53 {op}: {what}"));
        }
        if code == "InvalidInput" || code == "InvalidArgument" {
            return Class::Fatal(PluginError::config(format!(
                "Route53 {op} rejected its input: {what}"
            )));
        }
        Class::Fatal(PluginError::internal(format!(
            "Route53 {op} failed: {what}"
        )))
    }
}

/// A credential provider failure as a certsmith error. Never includes a
/// secret: the providers' errors name files, profiles and variables only.
fn credentials_error(
    e: &aws_credential_types::provider::error::CredentialsError,
    source: &str,
) -> PluginError {
    use aws_credential_types::provider::error::CredentialsError as C;
    let detail = error_chain(e);
    match e {
        C::CredentialsNotLoaded(_) => PluginError::auth(format!(
            "no AWS credentials found in {source} ({detail}). Give access_key_id and \
             secret_access_key (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), a profile in \
             ~/.aws/credentials or ~/.aws/config (option profile or AWS_PROFILE), a web \
             identity token (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN), or run with an \
             ECS task role or EC2 instance profile. The credentials need {PERMISSIONS}"
        )),
        C::ProviderTimedOut(_) => PluginError::transient(format!(
            "timed out fetching AWS credentials from {source}: {detail}"
        )),
        C::InvalidConfiguration(_) => PluginError::config(format!(
            "the AWS credentials configuration is invalid ({source}): {detail}"
        )),
        _ => PluginError::auth(format!(
            "could not get AWS credentials from {source}: {detail}. The credentials need \
             {PERMISSIONS}"
        )),
    }
}

/// An error and its sources, by their `Display` only (the SDK's
/// `DisplayErrorContext` appends a `Debug` dump), skipping a source whose
/// text the previous ones already contain.
fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The text of the first `<tag>...</tag>` in an XML body.
fn xml_text(body: &[u8], tag: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&format!("</{tag}>"))?;
    let inner = text[start..start + len].trim();
    (!inner.is_empty() && !inner.contains('<')).then(|| {
        inner
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_text_finds_codes_in_other_shapes() {
        let moto = b"<?xml version=\"1.0\"?><ErrorResponse><Errors><Error><Code>InvalidClientTokenId</Code><Message>The token &amp; co</Message></Error></Errors></ErrorResponse>";
        assert_eq!(
            xml_text(moto, "Code").as_deref(),
            Some("InvalidClientTokenId")
        );
        assert_eq!(xml_text(moto, "Message").as_deref(), Some("The token & co"));
        assert_eq!(xml_text(b"<a><Code></Code></a>", "Code"), None);
        assert_eq!(xml_text(b"not xml", "Code"), None);
    }

    #[test]
    fn the_policy_is_jittered_and_keeps_the_margin() {
        let b = backoff(3);
        assert_eq!(b.attempts, 3);
        assert_eq!((b.initial, b.max), (BACKOFF_BASE, BACKOFF_CAP));
        assert_eq!(b.reserve, DEADLINE_MARGIN);
        assert!(b.equal_jitter);
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    /// Without a host to send it (this unit test attaches none), a request
    /// fails at once as `internal`, saying why, and is not retried.
    #[test]
    fn no_host_is_an_internal_error_not_retried() {
        let settings = crate::Settings::from_config(crate::Route53Config {
            endpoint_url: Some("http://127.0.0.1:9".into()),
            access_key_id: Some("AKIDTESTING".into()),
            secret_access_key: Some("testing-secret".into()),
            ..crate::Route53Config::default()
        })
        .expect("valid");
        let rt = rt();
        let aws = rt.block_on(Aws::connect(&settings)).expect("static keys");
        let started = std::time::Instant::now();
        let r = rt.block_on(aws.call(
            &Deadline::from_now(Duration::from_secs(20)),
            "GetChange",
            || aws.client.get_change().id("C1").send(),
        ));
        let Err(Failure::Fatal(e)) = r else {
            panic!("{r:?}")
        };
        eprintln!("{e}");
        assert_eq!(e.kind, ErrorKind::Internal, "{e}");
        assert!(e.message.contains("no such host is attached"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "retried: {e}");
    }

    #[test]
    fn retry_until_hands_back_a_stop_as_it_was() {
        let mut calls = 0;
        let r: Result<(), GaveUp<&str>> = rt().block_on(retry_until(
            &Deadline::from_now(Duration::from_secs(5)),
            Backoff::new(5, Duration::from_millis(1), Duration::from_millis(1)),
            |_| {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err(Try::Again(PluginError::internal("not retryable by kind")))
                    } else {
                        Err(Try::Stop("race"))
                    }
                }
            },
        ));
        // `Again` is retried even for a kind that is not retryable itself.
        assert_eq!(calls, 3);
        assert!(matches!(r, Err(GaveUp::Stop("race"))), "{r:?}");
    }

    #[test]
    fn retry_until_gives_up_with_the_last_error() {
        let mut calls = 0;
        let r: Result<(), GaveUp<()>> = rt().block_on(retry_until(
            &Deadline::from_now(Duration::from_secs(5)),
            Backoff::new(2, Duration::from_millis(1), Duration::from_millis(1)),
            |_| {
                calls += 1;
                let n = calls;
                async move { Err(Try::Again(PluginError::transient(format!("try {n}")))) }
            },
        ));
        assert_eq!(calls, 2);
        match r {
            Err(GaveUp::Again(e)) => assert_eq!(e.message, "try 2"),
            other => panic!("{other:?}"),
        }
    }
}
