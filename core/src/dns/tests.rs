use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::propagation::*;
use super::resolve::*;
use super::*;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS};

#[test]
fn names_and_values() {
    assert_eq!(
        challenge_name("*.example.com"),
        "_acme-challenge.example.com"
    );
    assert_eq!(
        challenge_name("example.com."),
        "_acme-challenge.example.com"
    );
    // RFC 8555 §8.4 example: the digest of a known key authorization.
    assert_eq!(
        txt_value("evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEt62jcerQ"),
        URL_SAFE_NO_PAD.encode(
            aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                b"evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEt62jcerQ"
            )
            .as_ref()
        )
    );
    assert_eq!(txt_value("x").len(), 43);
}

#[test]
fn server_syntax() {
    assert_eq!(parse_server("127.0.0.1"), "127.0.0.1:53".parse().ok());
    assert_eq!(
        parse_server("127.0.0.1:5353"),
        "127.0.0.1:5353".parse().ok()
    );
    assert_eq!(parse_server("[::1]:54"), "[::1]:54".parse().ok());
    assert_eq!(parse_server("ns1.example.com"), None);
}

/// What the fake resolver answers for one question.
#[derive(Default)]
struct Reply {
    code: Option<ResponseCode>,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

fn n(s: &str) -> Name {
    to_name(s).expect("name")
}

fn rec(name: &str, data: RData) -> Record {
    Record::from_rdata(n(name), 60, data)
}

fn soa(zone: &str) -> Record {
    rec(
        zone,
        RData::SOA(SOA::new(
            n(&format!("ns1.{zone}")),
            n(&format!("hostmaster.{zone}")),
            1,
            3600,
            600,
            86400,
            60,
        )),
    )
}

/// A recursive resolver on 127.0.0.1 answering from `answer`, over UDP.
async fn fake_resolver(answer: impl Fn(&str, RecordType) -> Reply + Send + 'static) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = sock.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((len, peer)) = sock.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let Some(query) = q.queries.first().cloned() else {
                continue;
            };
            let r = answer(&plain(query.name()), query.query_type());
            let mut m = Message::response(q.metadata.id, q.metadata.op_code);
            m.metadata.recursion_desired = q.metadata.recursion_desired;
            m.metadata.recursion_available = true;
            m.metadata.response_code = r.code.unwrap_or(ResponseCode::NoError);
            m.add_query(query);
            m.add_answers(r.answers);
            m.add_authorities(r.authorities);
            m.add_additionals(r.additionals);
            if let Ok(bytes) = m.to_vec() {
                let _ = sock.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}

fn on(resolver: SocketAddr) -> DnsOptions {
    DnsOptions {
        resolvers: vec![resolver],
        ..DnsOptions::default()
    }
}

#[tokio::test]
async fn cname_zone_and_nameservers_through_the_resolver() {
    let resolver = fake_resolver(|name, rtype| match (name, rtype) {
        ("_acme-challenge.app.example.test", RecordType::CNAME) => Reply {
            answers: vec![rec(
                "_acme-challenge.app.example.test",
                RData::CNAME(CNAME(n("_acme-challenge.App.Validation.test"))),
            )],
            ..Reply::default()
        },
        ("_acme-challenge.app.validation.test", _) => Reply {
            code: Some(ResponseCode::NXDomain),
            authorities: vec![soa("validation.test")],
            ..Reply::default()
        },
        ("validation.test", RecordType::NS) => Reply {
            answers: vec![
                rec("validation.test", RData::NS(NS(n("ns1.validation.test")))),
                rec("validation.test", RData::NS(NS(n("ns2.other.test")))),
            ],
            additionals: vec![rec("ns1.validation.test", RData::A(A::new(192, 0, 2, 1)))],
            ..Reply::default()
        },
        ("ns1.validation.test", RecordType::A) => Reply {
            answers: vec![rec("ns1.validation.test", RData::A(A::new(192, 0, 2, 1)))],
            ..Reply::default()
        },
        ("ns2.other.test", RecordType::A) => Reply {
            answers: vec![rec("ns2.other.test", RData::A(A::new(192, 0, 2, 2)))],
            ..Reply::default()
        },
        ("ns2.other.test", RecordType::AAAA) => Reply {
            answers: vec![rec(
                "ns2.other.test",
                RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
            )],
            ..Reply::default()
        },
        (_, _) => Reply {
            authorities: vec![soa("test")],
            ..Reply::default()
        },
    })
    .await;
    let r = resolve_challenge_name(&on(resolver), "*.app.example.test")
        .await
        .expect("resolve");
    assert_eq!(r.effective, "_acme-challenge.app.validation.test");
    assert_eq!(
        r.chain,
        vec![
            "_acme-challenge.app.example.test",
            "_acme-challenge.app.validation.test"
        ]
    );
    assert_eq!(r.zone, "validation.test");
    assert_eq!(r.relative, "_acme-challenge.app");
    assert_eq!(r.primary_ns.as_deref(), Some("ns1.validation.test"));
    let ns: Vec<String> = r
        .nameservers
        .iter()
        .map(|(label, addr)| format!("{label} {addr}"))
        .collect();
    assert_eq!(
        ns,
        vec![
            "ns1.validation.test (192.0.2.1) 192.0.2.1:53",
            "ns2.other.test (192.0.2.2) 192.0.2.2:53",
            "ns2.other.test (2001:db8::2) [2001:db8::2]:53",
        ]
    );
}

#[tokio::test]
async fn cname_loops_and_long_chains_are_reported() {
    let resolver = fake_resolver(|name, rtype| {
        let target = match name {
            "_acme-challenge.loop1.test" => "_acme-challenge.loop2.test".to_owned(),
            "_acme-challenge.loop2.test" => "_acme-challenge.loop1.test".to_owned(),
            long => match long.strip_prefix("hop").and_then(|r| r.split_once('.')) {
                Some((i, _)) => format!("hop{}.test", i.parse::<u32>().unwrap_or(0) + 1),
                None => "hop0.test".to_owned(),
            },
        };
        match rtype {
            RecordType::CNAME => Reply {
                answers: vec![rec(name, RData::CNAME(CNAME(n(&target))))],
                ..Reply::default()
            },
            _ => Reply::default(),
        }
    })
    .await;
    let e = resolve_challenge_name(&on(resolver), "loop1.test")
        .await
        .expect_err("loop");
    let DnsError::CnameLoop(chain) = &e else {
        panic!("{e}")
    };
    assert_eq!(
        chain,
        &vec![
            "_acme-challenge.loop1.test",
            "_acme-challenge.loop2.test",
            "_acme-challenge.loop1.test"
        ]
    );
    let e = resolve_challenge_name(&on(resolver), "long.test")
        .await
        .expect_err("too long");
    let DnsError::TooManyCnames(chain) = &e else {
        panic!("{e}")
    };
    assert_eq!(chain.len(), MAX_CNAME_HOPS + 2, "{e}");
}

#[tokio::test]
async fn a_server_without_soa_needs_propagation_servers() {
    // Like pebble-challtestsrv: no SOA anywhere, NOTIMP for SOA.
    let resolver = fake_resolver(|_, rtype| Reply {
        code: (rtype == RecordType::SOA).then_some(ResponseCode::NotImp),
        ..Reply::default()
    })
    .await;
    let e = resolve_challenge_name(&on(resolver), "a.b.test")
        .await
        .expect_err("no zone");
    assert!(
        matches!(&e, DnsError::NoZone(n) if n == "_acme-challenge.a.b.test"),
        "{e}"
    );

    let check: SocketAddr = "127.0.0.1:8053".parse().expect("addr");
    let opts = DnsOptions {
        propagation_servers: vec![check],
        ..on(resolver)
    };
    let r = resolve_challenge_name(&opts, "a.b.test")
        .await
        .expect("tolerated");
    assert_eq!(r.zone, "a.b.test");
    assert_eq!(r.relative, "_acme-challenge");
    assert_eq!(r.primary_ns, None);
    assert_eq!(r.nameservers, vec![(check.to_string(), check)]);
}

#[tokio::test]
async fn a_failing_resolver_is_a_lookup_error_naming_it() {
    let resolver = fake_resolver(|_, _| Reply {
        code: Some(ResponseCode::ServFail),
        ..Reply::default()
    })
    .await;
    let e = resolve_challenge_name(&on(resolver), "a.test")
        .await
        .expect_err("servfail");
    assert!(matches!(e, DnsError::Lookup { .. }), "{e}");
    let s = e.to_string();
    assert!(
        s.starts_with("looking up _acme-challenge.a.test CNAME through "),
        "{s}"
    );
    assert!(s.contains(&resolver.to_string()), "{s}");
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn propagation_checks_parse_and_print_back() {
    for (text, check) in [
        ("authoritative", PropagationCheck::Authoritative),
        ("Recursive", PropagationCheck::Recursive),
        ("wait:30", PropagationCheck::Wait(Duration::from_secs(30))),
        ("wait:0", PropagationCheck::Wait(Duration::ZERO)),
    ] {
        assert_eq!(text.parse::<PropagationCheck>(), Ok(check), "{text}");
        assert_eq!(
            check.to_string().parse::<PropagationCheck>(),
            Ok(check),
            "{check}"
        );
    }
    assert_eq!(PropagationCheck::default(), PropagationCheck::Authoritative);
    assert!(matches!(
        "wait".parse::<PropagationCheck>(),
        Err(PropagationCheckError::Unknown(_))
    ));
    assert!(matches!(
        "wait:30s".parse::<PropagationCheck>(),
        Err(PropagationCheckError::BadSeconds(_))
    ));
    assert!(matches!(
        "wait:3601".parse::<PropagationCheck>(),
        Err(PropagationCheckError::TooLong(_))
    ));
}

/// A zone whose nameserver has an address: what an authoritative check
/// would ask.
fn zone_with_a_nameserver(name: &str, rtype: RecordType) -> Reply {
    match (name, rtype) {
        ("example.test", RecordType::NS) => Reply {
            answers: vec![rec("example.test", RData::NS(NS(n("ns1.example.test"))))],
            ..Reply::default()
        },
        ("ns1.example.test", RecordType::A) => Reply {
            answers: vec![rec("ns1.example.test", RData::A(A::new(192, 0, 2, 1)))],
            ..Reply::default()
        },
        (_, _) => Reply {
            code: Some(ResponseCode::NXDomain),
            authorities: vec![soa("example.test")],
            ..Reply::default()
        },
    }
}

#[tokio::test]
async fn each_check_asks_its_own_servers() {
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<RecordType>::new()));
    let log = asked.clone();
    let resolver = fake_resolver(move |name, rtype| {
        if let Ok(mut l) = log.lock() {
            l.push(rtype);
        }
        zone_with_a_nameserver(name, rtype)
    })
    .await;
    let with = |check| DnsOptions {
        propagation_check: Some(check),
        ..on(resolver)
    };
    let r = resolve_challenge_name(&with(PropagationCheck::Authoritative), "a.example.test")
        .await
        .expect("authoritative");
    assert_eq!(
        r.nameservers,
        vec![(
            "ns1.example.test (192.0.2.1)".to_owned(),
            "192.0.2.1:53".parse().expect("addr")
        )]
    );
    let ns_lookups = |asked: &std::sync::Mutex<Vec<RecordType>>| {
        asked
            .lock()
            .map(|l| l.iter().filter(|t| **t == RecordType::NS).count())
            .unwrap_or(usize::MAX)
    };
    assert_eq!(ns_lookups(&asked), 1);

    // The recursive check asks the resolvers, the wait asks nobody:
    // neither looks the nameservers up.
    let r = resolve_challenge_name(&with(PropagationCheck::Recursive), "a.example.test")
        .await
        .expect("recursive");
    assert_eq!(
        r.nameservers,
        vec![(format!("resolver {resolver}"), resolver)]
    );
    assert_eq!(r.zone, "example.test");
    let wait = PropagationCheck::Wait(Duration::from_secs(5));
    let r = resolve_challenge_name(&with(wait), "a.example.test")
        .await
        .expect("wait");
    assert!(r.nameservers.is_empty());
    assert_eq!(ns_lookups(&asked), 1, "no NS lookup but the first");
}

#[tokio::test]
async fn the_recursive_check_asks_with_recursion() {
    // A resolver that only answers clients asking for recursion, as a
    // resolver in front of unreachable nameservers would; an
    // authoritative-style query gets REFUSED.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = sock.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((len, peer)) = sock.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let Some(query) = q.queries.first().cloned() else {
                continue;
            };
            let mut m = Message::response(q.metadata.id, q.metadata.op_code);
            m.metadata.recursion_available = true;
            if q.metadata.recursion_desired {
                m.add_answer(rec(
                    &plain(query.name()),
                    RData::TXT(hickory_proto::rr::rdata::TXT::new(vec!["v1".to_owned()])),
                ));
            } else {
                m.metadata.response_code = ResponseCode::Refused;
            }
            m.add_query(query);
            if let Ok(bytes) = m.to_vec() {
                let _ = sock.send_to(&bytes, peer).await;
            }
        }
    });
    let target = |recursive| PropagationTarget {
        fqdn: "_acme-challenge.a.test".to_owned(),
        values: vec!["v1".to_owned()],
        nameservers: vec![(format!("resolver {addr}"), addr)],
        recursive,
    };
    let states = check_once(&target(true), Duration::from_secs(2)).await;
    assert!(states.iter().all(|s| s.ready), "{states:?}");
    let e = wait_for_propagation(
        &target(false),
        Duration::ZERO,
        Duration::from_millis(10),
        Duration::from_secs(2),
        |_, _| {},
    )
    .await
    .expect_err("refused without recursion");
    assert!(
        e.to_string().contains("every authoritative nameserver"),
        "{e}"
    );
    let e = DnsError::PropagationTimeout {
        fqdn: "x".into(),
        recursive: true,
        waited: Duration::ZERO,
        servers: Vec::new(),
    };
    assert!(
        e.to_string().contains("did not reach every resolver"),
        "{e}"
    );
}

#[test]
fn user_resolvers_keep_their_ports() {
    let a: SocketAddr = "127.0.0.1:5353".parse().expect("addr");
    let b: SocketAddr = "[::1]:54".parse().expect("addr");
    assert_eq!(server_addrs(&user_config(&[a, b])), vec![a, b]);
}

#[test]
fn timeout_message_lists_every_server() {
    let e = DnsError::PropagationTimeout {
        fqdn: "_acme-challenge.a.test".into(),
        recursive: false,
        waited: Duration::from_secs(3),
        servers: vec![
            ServerState {
                server: "ns1 (192.0.2.1)".into(),
                ready: true,
                observed: "serves all 1 values".into(),
            },
            ServerState {
                server: "ns2 (192.0.2.2)".into(),
                ready: false,
                observed: "error: no answer within 2000ms".into(),
            },
        ],
    };
    let s = e.to_string();
    assert!(s.contains("(1/2 serve it)"), "{s}");
    assert!(s.contains("MISS ns2 (192.0.2.2): error: no answer"), "{s}");
    assert!(s.contains("ok   ns1 (192.0.2.1)"), "{s}");
}
