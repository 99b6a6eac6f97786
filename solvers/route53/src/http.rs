//! The AWS SDK's HTTP client: certsmith's (plugin ABI 1.3).
//!
//! Why: the SDK's own client is hyper with rustls on aws-lc-rs, most of what
//! this plugin used to weigh. The SDK takes any smithy [`HttpClient`]; this
//! one hands every request, Route53's and the credential providers' (STS,
//! ECS, EC2 metadata), to the host through the plugin SDK's [`HttpRequest`],
//! so the plugin carries no TLS stack.
//!
//! Bodies are whole in memory both ways (Route53's and the credential
//! services' requests and answers are small documents); a streaming request
//! body is refused as the caller's error.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{
    HttpRequest as SdkRequest, HttpResponse as SdkResponse,
};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use certsmith_plugin_api::sdk::{HttpRequest, HttpResponse as HostAnswer};
use certsmith_plugin_api::{ErrorKind, PluginError};

/// What the host allows for connecting when the SDK names no connect
/// timeout (its own limit).
const HOST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The SDK's HTTP client, sending through the host.
#[derive(Clone, Debug)]
pub(crate) struct HostHttpClient {
    /// The limit of one exchange when the SDK sets no read timeout (the
    /// operation attempt timeout; the SDK enforces that one itself too).
    fallback_timeout: Duration,
}

impl HostHttpClient {
    pub(crate) fn new(fallback_timeout: Duration) -> Self {
        HostHttpClient { fallback_timeout }
    }
}

impl HttpClient for HostHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(HostConnector {
            timeout: exchange_timeout(settings, self.fallback_timeout),
        })
    }
}

/// The host's request has one limit for the whole exchange; the SDK's
/// settings have a connect timeout and a read timeout (to the first byte of
/// the answer). Their sum bounds the same wait: with the EC2 metadata
/// client's 1 s and 1 s, a probe off EC2 gives up after 2 s, not the host's
/// default 30 s.
fn exchange_timeout(settings: &HttpConnectorSettings, fallback: Duration) -> Duration {
    match settings.read_timeout() {
        Some(read) => settings
            .connect_timeout()
            .unwrap_or(HOST_CONNECT_TIMEOUT)
            .saturating_add(read),
        None => fallback,
    }
}

/// One set of settings' connector.
#[derive(Debug)]
struct HostConnector {
    timeout: Duration,
}

impl HttpConnector for HostConnector {
    fn call(&self, request: SdkRequest) -> HttpConnectorFuture {
        let request = to_host(&request, self.timeout);
        HttpConnectorFuture::new(async move {
            let answer = request?.send().await.map_err(connector_error)?;
            from_host(answer)
        })
    }
}

fn to_host(request: &SdkRequest, timeout: Duration) -> Result<HttpRequest, ConnectorError> {
    let body = request.body().bytes().ok_or_else(|| {
        ConnectorError::user("a streaming request body cannot be sent through certsmith".into())
    })?;
    let mut out = HttpRequest::new(request.method(), request.uri())
        .timeout(timeout)
        .body(body);
    for (name, value) in request.headers().iter() {
        out = out.header(name, value);
    }
    Ok(out)
}

fn from_host(answer: HostAnswer) -> Result<SdkResponse, ConnectorError> {
    let status = StatusCode::try_from(answer.status()).map_err(|e| {
        ConnectorError::other(
            format!(
                "the answer's status {} is not an HTTP status: {e}",
                answer.status()
            )
            .into(),
            None,
        )
    })?;
    let headers = answer.headers().to_vec();
    let mut response = SdkResponse::new(status, SdkBody::from(answer.into_body()));
    for (name, value) in headers {
        // The host passes only UTF-8 values; a name or value the SDK still
        // refuses is left out, as the host leaves out what it cannot pass.
        let _ = response.headers_mut().try_append(name, value);
    }
    Ok(response)
}

/// The host's failure as the SDK's connector error, so that the SDK (and
/// `Aws::classify`) sees the same classes as with its own
/// client: `user` for a request the host refuses, `timeout` and `io` for no
/// answer, `other` for anything else (no host attached, a malformed answer).
fn connector_error(e: PluginError) -> ConnectorError {
    // The host says "timed out" for every timeout (PluginError::from_transport);
    // the error carries no other mark of one.
    let timed_out = e.message.contains("timed out");
    let kind = e.kind;
    let source = Box::new(HostError(e));
    match kind {
        ErrorKind::Config => ConnectorError::user(source),
        ErrorKind::Transient | ErrorKind::RateLimited if timed_out => {
            ConnectorError::timeout(source)
        }
        ErrorKind::Transient | ErrorKind::RateLimited => ConnectorError::io(source),
        _ => ConnectorError::other(source, None),
    }
}

/// The host's error as a source in the SDK's error chain: its message only,
/// without the kind the class above already says.
#[derive(Debug)]
struct HostError(PluginError);

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl StdError for HostError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exchange_limit_is_connect_plus_read_or_the_fallback() {
        let fallback = Duration::from_secs(30);
        let both = HttpConnectorSettings::builder()
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(1))
            .build();
        assert_eq!(exchange_timeout(&both, fallback), Duration::from_secs(2));
        let read = HttpConnectorSettings::builder()
            .read_timeout(Duration::from_secs(5))
            .build();
        assert_eq!(exchange_timeout(&read, fallback), Duration::from_secs(15));
        let connect = HttpConnectorSettings::builder()
            .connect_timeout(Duration::from_secs(10))
            .build();
        assert_eq!(exchange_timeout(&connect, fallback), fallback);
    }

    #[test]
    fn host_failures_keep_their_class() {
        let refused = connector_error(PluginError::transient(
            "GET http://127.0.0.1:9/ failed: connection refused; is the service running at that address?",
        ));
        assert!(refused.is_io(), "{refused:?}");
        let timeout = connector_error(PluginError::transient(
            "GET http://127.0.0.1:9/ failed: timed out (operation timed out)",
        ));
        assert!(timeout.is_timeout(), "{timeout:?}");
        let user = connector_error(PluginError::config("\"G T\" is not an HTTP method"));
        assert!(user.is_user(), "{user:?}");
        let other = connector_error(PluginError::internal("no such host is attached"));
        assert!(other.is_other(), "{other:?}");
        // The message, without the kind's prefix, is the source's text.
        assert_eq!(
            other.source().map(ToString::to_string).as_deref(),
            Some("no such host is attached")
        );
    }

    #[test]
    fn answers_become_sdk_responses() {
        use certsmith_plugin_api::wire::HttpResponseHead;

        let mut head = HttpResponseHead::new(400);
        head.headers.push(("x-amzn-requestid".into(), "abc".into()));
        head.headers
            .push(("content-type".into(), "text/xml".into()));
        let answer = HostAnswer::new(head, b"<Error/>".to_vec());
        let r = from_host(answer).expect("converts");
        assert_eq!(r.status().as_u16(), 400);
        assert_eq!(r.headers().get("X-Amzn-RequestId"), Some("abc"));
        assert_eq!(r.body().bytes(), Some(&b"<Error/>"[..]));
    }

    #[test]
    fn requests_keep_method_uri_headers_and_body() {
        let mut req = SdkRequest::new(SdkBody::from("<ChangeBatch/>"));
        req.set_method("POST").expect("method");
        req.set_uri("https://route53.amazonaws.com/2013-04-01/hostedzone/Z1/rrset/")
            .expect("uri");
        req.headers_mut().insert("content-type", "application/xml");
        let out = to_host(&req, Duration::from_secs(7)).expect("converts");
        assert_eq!(out.method(), "POST");
        assert_eq!(
            out.url(),
            "https://route53.amazonaws.com/2013-04-01/hostedzone/Z1/rrset/"
        );
        let shown = format!("{out:?}");
        assert!(
            shown.contains("content-type") && shown.contains("body_len: 14"),
            "{shown}"
        );
    }
}
