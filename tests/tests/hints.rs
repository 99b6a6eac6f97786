//! Hints specific to the cause (issue 11, item 10), through the built
//! binary against a real Pebble: a propagation timeout where a nameserver
//! answers with an error points at `--propagation-server`, not a longer
//! timeout; a dns-01 record the CA did not find gets the dns-01 hint, not
//! the http-01 one.

use std::net::UdpSocket;

use certsmith_tests::{Pebble, PebbleOpts, TempState};

use crate::dns01::{bind, issue_args, pebble_on, rfc2136_opts_checking, run, s, texts};

/// A UDP nameserver that answers every query REFUSED (until the socket is
/// dropped): its address.
fn refusing_server() -> String {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = sock.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            // The query back, as a response (QR), with RCODE 5 (REFUSED).
            buf[2] |= 0x80;
            buf[3] = (buf[3] & 0xf0) | 5;
            if sock.send_to(&buf[..n], from).is_err() {
                break;
            }
        }
    });
    addr
}

#[test]
fn a_refusing_nameserver_suggests_other_servers_not_a_longer_timeout() {
    let bind = bind();
    let pebble = pebble_on(&bind);
    let state = TempState::new().expect("state");
    let refusing = refusing_server();
    let mut args = issue_args(&pebble, state.path(), &["example.test"], "rfc2136");
    args.extend(rfc2136_opts_checking(&bind, &[&refusing]));
    args.extend(s(&["--propagation-timeout", "2"]));
    let o = run(&args, &[("RFC2136_TSIG_SECRET", bind.tsig_secret_b64())]);
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(6), "{out}\n{err}");
    assert!(err.contains(&format!("MISS {refusing}: error")), "{err}");
    assert!(
        err.contains("hint: a nameserver answered with an error")
            && err.contains("--propagation-server"),
        "{err}"
    );
    assert!(!err.contains("longer --propagation-timeout"), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert!(
        v["error"]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("--propagation-server")),
        "{v}"
    );
}

#[test]
fn a_dns_01_rejection_gets_the_dns_01_hint() {
    // Pebble asks its challtestsrv, which never sees the record the solver
    // writes into BIND (where the propagation check finds it).
    let bind = bind();
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let state = TempState::new().expect("state");
    let mut args = issue_args(&pebble, state.path(), &["example.test"], "rfc2136");
    args.extend(rfc2136_opts_checking(&bind, &[&bind.addr().to_string()]));
    let o = run(&args, &[("RFC2136_TSIG_SECRET", bind.tsig_secret_b64())]);
    let (out, err) = texts(&o);
    assert_ne!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(err.contains("dns-01"), "{err}");
    assert!(
        err.contains("hint: the CA did not find the _acme-challenge TXT record"),
        "{err}"
    );
    assert!(!err.contains("points at the server"), "{err}");
    assert!(!err.contains("ports 80/443"), "{err}");
}
