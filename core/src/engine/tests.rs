use super::chain::*;
use super::challenge::*;
use super::*;
use crate::acme::{AuthzInfo, AuthzStatus, ChallengeInfo};
use crate::dns::{self, ResolvedName};
use certsmith_plugin_api::{ChallengeType, Manifest};

fn manifest(types: &str) -> Manifest {
    Manifest::parse(&format!(
        "code = \"t\"\nname = \"T\"\nversion = \"0.1.0\"\nchallenge_types = [{types}]\n"
    ))
    .expect("manifest")
}

fn authz(wildcard: bool, offered: &[ChallengeType]) -> AuthzInfo {
    AuthzInfo {
        url: "https://ca/authz/1".into(),
        identifier: "a.example".into(),
        wildcard,
        status: AuthzStatus::Pending,
        challenges: offered
            .iter()
            .map(|t| ChallengeInfo {
                challenge_type: Some(*t),
                type_name: t.as_str().into(),
                url: format!("https://ca/chall/{t}"),
                token: "tok".into(),
                key_authorization: "tok.thumb".into(),
            })
            .collect(),
    }
}

const ALL: [ChallengeType; 3] = [
    ChallengeType::Dns01,
    ChallengeType::TlsAlpn01,
    ChallengeType::Http01,
];

#[test]
fn challenge_preference() {
    let m = manifest("\"tls-alpn-01\", \"http-01\"");
    let a = authz(false, &ALL);
    let (t, c) = choose_challenge(&a, &m, &[]).expect("choice");
    assert_eq!(t, ChallengeType::Http01);
    assert_eq!(c.url, "https://ca/chall/http-01");
    let (t, _) = choose_challenge(&authz(false, &[ChallengeType::TlsAlpn01]), &m, &[]).expect("c");
    assert_eq!(t, ChallengeType::TlsAlpn01);

    let e = choose_challenge(&authz(false, &[ChallengeType::Dns01]), &m, &[]).expect_err("none");
    assert_eq!(
        e.to_string(),
        "the CA offers dns-01 for 'a.example', but solver 't' answers only tls-alpn-01, http-01"
    );
    // A wildcard only ever uses dns-01.
    let dns = manifest("\"http-01\", \"dns-01\"");
    let (t, _) = choose_challenge(&authz(true, &ALL), &dns, &[]).expect("choice");
    assert_eq!(t, ChallengeType::Dns01);
}

/// `--challenge` / `challenges`: the first asked for that the CA offers
/// wins, whatever the default order says.
#[test]
fn challenge_preference_asked_for() {
    let m = manifest("\"http-01\", \"tls-alpn-01\"");
    let a = authz(false, &ALL);
    let (t, _) = choose_challenge(&a, &m, &[ChallengeType::TlsAlpn01]).expect("choice");
    assert_eq!(t, ChallengeType::TlsAlpn01);
    let (t, _) = choose_challenge(
        &authz(false, &[ChallengeType::Http01]),
        &m,
        &[ChallengeType::TlsAlpn01, ChallengeType::Http01],
    )
    .expect("choice");
    assert_eq!(
        t,
        ChallengeType::Http01,
        "the second choice when the CA lacks the first"
    );
    assert!(
        choose_challenge(
            &authz(false, &[ChallengeType::Http01]),
            &m,
            &[ChallengeType::TlsAlpn01]
        )
        .is_err()
    );
}

#[test]
fn challenge_request_fields() {
    let m = manifest("\"http-01\"");
    let a = authz(false, &ALL);
    let (t, c) = choose_challenge(&a, &m, &[]).expect("choice");
    let before = now_unix_ms();
    let r = challenge_request(&a, t, c, &m, None).expect("request");
    assert_eq!(r.challenge_type, ChallengeType::Http01);
    assert_eq!(r.identifier, "a.example");
    assert_eq!(r.key_authorization, "tok.thumb");
    assert!(r.dns.is_none());
    let timeout_ms = m.defaults.call_timeout_s * 1000;
    assert!(
        r.deadline_unix_ms >= before + timeout_ms
            && r.deadline_unix_ms <= now_unix_ms() + timeout_ms
    );

    // dns-01: the target comes from the resolved name, the value from
    // the key authorization.
    let d = manifest("\"dns-01\"");
    let resolved = ResolvedName {
        requested: "_acme-challenge.a.example".into(),
        effective: "_acme-challenge.v.example.net".into(),
        chain: vec![
            "_acme-challenge.a.example".into(),
            "_acme-challenge.v.example.net".into(),
        ],
        zone: "example.net".into(),
        relative: "_acme-challenge.v".into(),
        primary_ns: Some("ns1.example.net".into()),
        nameservers: Vec::new(),
    };
    let r = challenge_request(&a, ChallengeType::Dns01, c, &d, Some(&resolved)).expect("dns");
    let target = r.dns.expect("dns target");
    assert_eq!(target.fqdn, "_acme-challenge.v.example.net");
    assert_eq!(target.zone, "example.net");
    assert_eq!(target.name, "_acme-challenge.v");
    assert_eq!(target.value, dns::txt_value("tok.thumb"));
    assert_eq!(target.primary_ns.as_deref(), Some("ns1.example.net"));
    assert!(challenge_request(&a, ChallengeType::Dns01, c, &d, None).is_err());
}

#[test]
fn chain_is_split_and_read() {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
    leaf_params.serial_number = Some(rcgen::SerialNumber::from(vec![0x00, 0x9a, 0x01]));
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    let chain = format!("{}\n{}", leaf.pem(), ca.pem());
    let p = parse_chain(&chain, "https://ca/dir").expect("parses");
    assert_eq!(p.cert_pem, leaf.pem().trim_end().to_owned() + "\n");
    assert_eq!(p.chain_pem, ca.pem().trim_end().to_owned() + "\n");
    assert_eq!(p.fullchain_pem, format!("{}{}", p.cert_pem, p.chain_pem));
    assert_eq!(p.serial, "9a01");
    assert!(p.not_after > p.not_before);

    assert!(parse_chain("garbage", "https://ca/dir").is_err());
}

#[tokio::test]
async fn cancel_token() {
    let t = CancelToken::new();
    assert!(!t.is_cancelled());
    let t2 = t.clone();
    let waiter = tokio::spawn(async move { t2.cancelled().await });
    t.cancel();
    waiter.await.expect("woken");
    assert!(t.is_cancelled());
    // Completes at once when already cancelled.
    t.cancelled().await;
}
