//! The plugin as the host sees it: the exported entry point, the embedded
//! manifest, and present/cleanup through the C vtable (create, invoke with a
//! completion callback, destroy), in this process.

use std::ffi::c_void;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use certsmith_plugin_api::abi::{
    Bytes, Completion, MAGIC, PluginHeader, STATUS_ERROR, STATUS_OK, SolverVTable,
};
use certsmith_plugin_api::{
    ChallengeType, CleanupParams, ErrorBody, ErrorKind, Manifest, Presented,
};
use certsmith_standalone::{StandaloneConfig, certsmith_solver_plugin_v1};

type Outcome = (u32, Vec<u8>);

/// A completion that sends its outcome to a channel.
fn completion() -> (Completion, mpsc::Receiver<Outcome>) {
    unsafe extern "C" fn done(ctx: *mut c_void, status: u32, body: Bytes) {
        // SAFETY: `ctx` is the `Box<Sender>` leaked in `completion`, and the
        // plugin calls `done` exactly once, so it is reclaimed exactly once.
        let tx = unsafe { Box::from_raw(ctx.cast::<mpsc::Sender<Outcome>>()) };
        // SAFETY: the body is valid for the duration of this call (ABI rule);
        // it is copied here.
        let body = unsafe { body.as_slice() }.to_vec();
        let _ = tx.send((status, body));
    }
    let (tx, rx) = mpsc::channel();
    let ctx = Box::into_raw(Box::new(tx)).cast::<c_void>();
    (Completion { ctx, done }, rx)
}

fn header() -> &'static PluginHeader {
    // SAFETY: a null host is allowed (no log forwarding); the header is
    // 'static plugin data.
    unsafe { &*certsmith_solver_plugin_v1(std::ptr::null()) }
}

fn vtable() -> &'static SolverVTable {
    // SAFETY: the header's vtable pointer is 'static plugin data.
    unsafe { &*header().vtable }
}

fn manifest() -> Manifest {
    // SAFETY: the manifest bytes are 'static plugin data.
    let text = unsafe { header().manifest_toml.as_slice() };
    Manifest::parse(std::str::from_utf8(text).expect("UTF-8 manifest")).expect("valid manifest")
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn invoke(inst: *mut c_void, method: &str, params: &serde_json::Value) -> Outcome {
    let params = serde_json::to_vec(params).expect("json");
    let (done, rx) = completion();
    // SAFETY: `inst` is a live instance from `create`; the byte slices are
    // valid for the call.
    unsafe {
        (vtable().invoke)(
            inst,
            Bytes::from_slice(method.as_bytes()),
            Bytes::from_slice(&params),
            done,
        );
    }
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the completion is called")
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn header_and_manifest() {
    let h = header();
    assert_eq!(h.magic, MAGIC);
    let m = manifest();
    assert_eq!(m.code, "standalone");
    assert_eq!(
        m.challenge_types,
        [ChallengeType::Http01, ChallengeType::TlsAlpn01]
    );
    // The manifest's defaults are the config struct's defaults.
    let defaults = StandaloneConfig::default();
    let listen = m.config["listen"].default.clone().expect("listen default");
    let tls_listen = m.config["tls_listen"]
        .default
        .clone()
        .expect("tls_listen default");
    assert_eq!(
        serde_json::to_value(listen).expect("json"),
        serde_json::json!(defaults.listen)
    );
    assert_eq!(
        serde_json::to_value(tls_listen).expect("json"),
        serde_json::json!(defaults.tls_listen)
    );
}

#[test]
fn bad_config_fails_create_with_a_config_error() {
    let (on_error, rx) = completion();
    let config = br#"{"listen":["not-an-address"]}"#;
    // SAFETY: the config bytes are valid for the call.
    let inst = unsafe { (vtable().create)(Bytes::from_slice(config), on_error) };
    assert!(inst.is_null());
    let (status, body) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("on_error is called");
    assert_eq!(status, STATUS_ERROR);
    let e: ErrorBody = serde_json::from_slice(&body).expect("error body");
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("not-an-address"), "{}", e.message);
}

#[test]
fn present_and_cleanup_through_the_vtable() {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = serde_json::json!({
        "listen": [addr.to_string()],
        "tls_listen": [format!("127.0.0.1:{}", free_port())],
    });
    let config = serde_json::to_vec(&config).expect("json");
    let (on_error, _rx) = completion();
    // SAFETY: the config bytes are valid for the call. On success `on_error`
    // is never called, so its boxed sender leaks; fine in a test.
    let inst = unsafe { (vtable().create)(Bytes::from_slice(&config), on_error) };
    assert!(!inst.is_null());

    let request = serde_json::json!({
        "challenge_type": "http-01",
        "identifier": "example.test",
        "token": "abiToken",
        "key_authorization": "abiToken.thumb",
        "deadline_unix_ms": u64::MAX,
    });
    let (status, body) = invoke(inst, "present", &request);
    assert_eq!(status, STATUS_OK, "{}", String::from_utf8_lossy(&body));
    let presented: Presented = serde_json::from_slice(&body).expect("presented");

    let response = get(addr, "/.well-known/acme-challenge/abiToken");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nabiToken.thumb"), "{response}");

    let params = CleanupParams {
        request: serde_json::from_value(request).expect("request"),
        presented,
    };
    let (status, body) = invoke(
        inst,
        "cleanup",
        &serde_json::to_value(&params).expect("json"),
    );
    assert_eq!(status, STATUS_OK, "{}", String::from_utf8_lossy(&body));
    assert!(TcpStream::connect(addr).is_err(), "closed after cleanup");

    // SAFETY: `inst` came from `create` and is not used afterwards.
    unsafe { (vtable().destroy)(inst) };
}
