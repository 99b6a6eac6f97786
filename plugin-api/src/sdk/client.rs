//! HTTP requests sent by the host on the plugin's behalf (ABI 1.3).
//!
//! Why: an HTTP client with TLS is most of a provider plugin's size (tokio's
//! I/O, hyper, rustls and a crypto library, about 5 MB each time), and every
//! plugin used to carry its own copy. Through [`HostApi::http`] the plugin
//! hands the host a request head and a body and gets the answer back: one
//! client, one connection pool, one set of trust roots for the whole process,
//! kept up to date with certsmith rather than with each plugin.
//!
//! ```no_run
//! # async fn demo() -> Result<(), certsmith_plugin_api::PluginError> {
//! use certsmith_plugin_api::sdk::HttpRequest;
//!
//! let answer = HttpRequest::post("https://api.example/v1/records")
//!     .bearer_auth("token")
//!     .json(&serde_json::json!({"type": "TXT", "content": "abc"}))
//!     .send()
//!     .await?; // Err only when no answer came: transient, with the cause
//! if !answer.is_success() {
//!     return Err(answer.error("POST /v1/records"));
//! }
//! # Ok(()) }
//! ```
//!
//! A test that calls a [`Solver`](crate::Solver) in its own process (no
//! `export_solver!` entry point involved) gives the SDK a host with
//! [`attach_host`](crate::sdk::attach_host) first.

use std::ffi::c_void;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::abi::{Bytes, Completion, HostApi, STATUS_OK};
use crate::wire::{
    ErrorBody, HttpRequestHead, HttpResponseHead, PluginError, decode_http_response,
};

/// One HTTP request, built and then [`send`](HttpRequest::send)t through the
/// host. `Debug` shows header names, never their values.
pub struct HttpRequest {
    head: HttpRequestHead,
    body: Vec<u8>,
    /// A body that could not be serialized: reported by `send`.
    invalid_body: Option<String>,
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRequest")
            .field("head", &self.head)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl HttpRequest {
    /// A request with `method` (`"GET"`, `"POST"` …) to an absolute URL.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        HttpRequest {
            head: HttpRequestHead::new(method, url),
            body: Vec::new(),
            invalid_body: None,
        }
    }

    /// `GET url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// `POST url`.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new("POST", url)
    }

    /// `PUT url`.
    pub fn put(url: impl Into<String>) -> Self {
        Self::new("PUT", url)
    }

    /// `PATCH url`.
    pub fn patch(url: impl Into<String>) -> Self {
        Self::new("PATCH", url)
    }

    /// `DELETE url`.
    pub fn delete(url: impl Into<String>) -> Self {
        Self::new("DELETE", url)
    }

    /// Adds a header (a name may repeat). A value the host cannot send (a
    /// line break in it, say) fails [`send`](Self::send) with a `config`
    /// error naming the header, not its value.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.head.headers.push((name.into(), value.into()));
        self
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer_auth(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    /// The body as JSON, with `Content-Type: application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => self.body = body,
            Err(e) => self.invalid_body = Some(e.to_string()),
        }
        self.header("content-type", "application/json")
    }

    /// The body as raw bytes (set `Content-Type` with [`header`](Self::header)).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The longest the whole exchange may take (the host's default is 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.head.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// How a failure without an answer names this request (`"{label}
    /// failed: connection refused"`), e.g. the `"GET /zones?name=x"` the
    /// plugin's other messages use. Without it the host says the method and
    /// the URL without its query or user info.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.head.label = Some(label.into());
        self
    }

    /// The method.
    pub fn method(&self) -> &str {
        &self.head.method
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.head.url
    }

    /// Sends the request through the host and waits for the answer.
    ///
    /// `Ok` for every answer, whatever its status (see
    /// [`HttpResponse::error`]); `Err` when none came: `transient` for a
    /// connection failure or a timeout (with the cause), `config` for a URL,
    /// method or header the host refuses, `internal` when there is no host
    /// that offers HTTP.
    pub async fn send(self) -> Result<HttpResponse, PluginError> {
        if let Some(why) = self.invalid_body {
            return Err(PluginError::internal(format!(
                "{} {}: the JSON body could not be written: {why}",
                self.head.method, self.head.url
            )));
        }
        let Some(http) = host_http() else {
            return Err(PluginError::internal(
                "this plugin sends HTTP requests through certsmith (plugin ABI 1.3), \
                 and no such host is attached; a test that calls the solver in its own \
                 process must call certsmith_plugin_api::sdk::attach_host first",
            ));
        };
        let head = serde_json::to_vec(&self.head)
            .map_err(|e| PluginError::internal(format!("cannot write the request head: {e}")))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<(u32, Vec<u8>)>();
        let ctx = Box::into_raw(Box::new(tx)).cast::<c_void>();
        // SAFETY: `http` comes from a 'static HostApi whose size covers the
        // field (host_http checked). Both slices outlive the call, which
        // borrows them only for its duration. `ctx` is a leaked box that
        // `http_done`, called exactly once by the ABI's contract, takes back.
        unsafe {
            http(
                Bytes::from_slice(&head),
                Bytes::from_slice(&self.body),
                Completion {
                    ctx,
                    done: http_done,
                },
            );
        }
        let (status, frame) = rx.await.map_err(|_| {
            PluginError::internal(format!(
                "{} {}: the host dropped the request without an answer",
                self.head.method, self.head.url
            ))
        })?;
        if status != STATUS_OK {
            return Err(
                serde_json::from_slice::<ErrorBody>(&frame).unwrap_or_else(|_| {
                    PluginError::internal(format!(
                        "{} {}: the host failed the request with status {status} and no error body",
                        self.head.method, self.head.url
                    ))
                }),
            );
        }
        let (head, body) = decode_http_response(&frame).map_err(|why| {
            PluginError::internal(format!(
                "{} {}: the host's answer is malformed ({why})",
                self.head.method, self.head.url
            ))
        })?;
        Ok(HttpResponse {
            head,
            body: body.to_vec(),
        })
    }
}

/// An HTTP answer, whatever its status.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    head: HttpResponseHead,
    body: Vec<u8>,
}

impl HttpResponse {
    /// An answer built by hand (for tests of code that reads answers).
    pub fn new(head: HttpResponseHead, body: Vec<u8>) -> Self {
        HttpResponse { head, body }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.head.status)
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header, names in lowercase.
    pub fn headers(&self) -> &[(String, String)] {
        &self.head.headers
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body, taken.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The SDK's error for this answer to `request` (e.g. `"POST /records"`),
    /// through [`ErrorBody::from_http_status`], with the body's text and
    /// `Retry-After`.
    pub fn error(&self, request: impl fmt::Display) -> PluginError {
        ErrorBody::from_http_status(
            self.head.status,
            request,
            &String::from_utf8_lossy(&self.body),
            self.header("retry-after"),
        )
    }
}

/// Whether `value` can be sent as a header value: no control character but
/// tab (a line break in a pasted token is the usual culprit). The host
/// refuses a request with such a header; a plugin checks its credentials
/// with this up front, to name the setting to fix.
pub fn header_value_ok(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// The host's `http` function, if the attached host has one.
fn host_http() -> Option<unsafe extern "C" fn(Bytes, Bytes, Completion)> {
    let host = super::HOST.load(Ordering::Acquire);
    if host.is_null() {
        return None;
    }
    // SAFETY: a non-null HOST is a 'static HostApi (set by init_host or
    // attach_host); `struct_size` is its first field in every version.
    let size = unsafe { (*host).struct_size } as usize;
    if size < std::mem::offset_of!(HostApi, http) + size_of::<usize>() {
        return None;
    }
    // SAFETY: as above, and the host's size covers `http`.
    unsafe { (*host).http }
}

/// The completion of one request: gives the answer to the waiting `send`.
unsafe extern "C" fn http_done(ctx: *mut c_void, status: u32, body: Bytes) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the box `send` leaked for this request, and the
        // host calls this exactly once, so it is reclaimed exactly once.
        let tx =
            unsafe { Box::from_raw(ctx.cast::<tokio::sync::oneshot::Sender<(u32, Vec<u8>)>>()) };
        // SAFETY: the ABI lends `body` for the duration of this call; it is
        // copied before returning.
        let frame = unsafe { body.as_slice() }.to_vec();
        // A `send` that stopped waiting dropped the receiver: nothing to do.
        let _ = tx.send((status, frame));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_hide_header_values_and_answers_find_headers_in_any_case() {
        let req = HttpRequest::post("https://api.example/x")
            .bearer_auth("s3cret")
            .json(&serde_json::json!({"a": 1}))
            .timeout(Duration::from_secs(5));
        let dbg = format!("{req:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("authorization"), "{dbg}");
        assert_eq!(req.head.timeout_ms, Some(5000));
        assert!(header_value_ok("Bearer abc.DEF-ghi_~+/= \té"));
        for bad in ["abc\ndef", "abc\r", "a\u{7f}", "\0"] {
            assert!(!header_value_ok(bad), "{bad:?}");
        }
        assert_eq!(req.body, br#"{"a":1}"#);

        let mut head = HttpResponseHead::new(429);
        head.headers.push(("retry-after".into(), "4".into()));
        let answer = HttpResponse::new(head, b"slow down".to_vec());
        assert_eq!(answer.header("Retry-After"), Some("4"));
        assert!(!answer.is_success());
        let e = answer.error("GET /x");
        assert_eq!(e.retry_after_ms, Some(4000));
        assert!(e.message.contains("slow down"), "{}", e.message);
    }
}
