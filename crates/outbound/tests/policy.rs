//! URL x allow-list -> allowed or refused (with the reason), through the public API.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use flare_outbound::{
    AddressClass, AllowList, EndpointPolicy, EndpointPolicyConfig, HostLookup, Refusal,
};

/// Names resolved from a table (a trailing dot ignored, as DNS does); others fail like NXDOMAIN.
struct TableLookup(HashMap<&'static str, Vec<IpAddr>>);

impl HostLookup for TableLookup {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(async move {
            self.0
                .get(host.trim_end_matches('.'))
                .cloned()
                .ok_or_else(|| std::io::Error::other("no such host"))
        })
    }
}

fn table() -> Arc<TableLookup> {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    Arc::new(TableLookup(HashMap::from([
        ("public.test", vec![ip("93.184.216.34")]),
        ("private.test", vec![ip("10.0.0.7")]),
        ("mixed.test", vec![ip("93.184.216.34"), ip("192.168.1.1")]),
        ("loop.test", vec![ip("127.0.0.2")]),
        ("v6private.test", vec![ip("fd12::1")]),
        ("v6mapped.test", vec![ip("::ffff:169.254.169.254")]),
        ("empty.test", vec![]),
    ])))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allowed,
    Forbidden(AddressClass),
    PlainHttp,
    Scheme,
    Credentials,
    Invalid,
    Metadata,
    Unresolvable,
}

fn kind(refusal: &Refusal) -> Expect {
    match refusal {
        Refusal::ForbiddenAddress { class, .. } => Expect::Forbidden(*class),
        Refusal::PlainHttp { .. } => Expect::PlainHttp,
        Refusal::UnsupportedScheme { .. } => Expect::Scheme,
        Refusal::CredentialsInUrl => Expect::Credentials,
        Refusal::InvalidUrl { .. } | Refusal::MissingHost => Expect::Invalid,
        Refusal::MetadataHost { .. } => Expect::Metadata,
        Refusal::Unresolvable { .. } => Expect::Unresolvable,
        other => panic!("unexpected refusal {other:?}"),
    }
}

#[tokio::test]
async fn urls_by_policy() {
    use AddressClass::*;
    use Expect::*;
    let cases: &[(&str, &str, Expect)] = &[
        // Public https is the normal case; plain http needs the allow-list.
        ("https://public.test/hook", "", Allowed),
        ("https://93.184.216.34/hook", "", Allowed),
        ("http://public.test/hook", "", PlainHttp),
        ("http://93.184.216.34/", "", PlainHttp),
        ("http://93.184.216.34/", "93.184.216.0/24", Allowed),
        ("https://172.32.0.1/", "", Allowed),
        ("https://100.128.0.1/", "", Allowed),
        // Loopback in every spelling the URL parser accepts.
        ("http://127.0.0.1/", "", Forbidden(Loopback)),
        ("https://127.0.0.1/", "", Forbidden(Loopback)),
        ("http://127.0.0.1:8080/", "127.0.0.0/8", Allowed),
        ("http://2130706433/", "", Forbidden(Loopback)),
        ("http://0177.0.0.1/", "", Forbidden(Loopback)),
        ("http://0x7f.0.0.1/", "", Forbidden(Loopback)),
        ("http://0x7f000001/", "", Forbidden(Loopback)),
        ("http://127.1/", "", Forbidden(Loopback)),
        ("http://127.0.0.1./", "", Forbidden(Loopback)),
        ("HTTP://127.0.0.1/", "", Forbidden(Loopback)),
        ("https://[::1]/", "", Forbidden(Loopback)),
        ("http://[::1]:9000/", "::1", Allowed),
        ("http://0.0.0.0/", "", Forbidden(Unspecified)),
        ("http://0/", "", Forbidden(Unspecified)),
        ("https://[::]/", "", Forbidden(Unspecified)),
        // IPv6 forms embedding an IPv4 address are judged by that address.
        ("https://[::ffff:127.0.0.1]/", "", Forbidden(Loopback)),
        ("https://[::ffff:7f00:1]/", "", Forbidden(Loopback)),
        (
            "https://[::ffff:169.254.169.254]/",
            "",
            Forbidden(CloudMetadata),
        ),
        ("https://[::ffff:10.0.0.1]/", "10.0.0.0/8", Allowed),
        ("https://[64:ff9b::a00:1]/", "", Forbidden(Private)),
        ("https://[2002:c0a8:101::1]/", "", Forbidden(Private)),
        ("https://[::127.0.0.1]/", "", Forbidden(Reserved)),
        // Zone ids are not valid in URLs.
        ("https://[fe80::1%25eth0]/", "", Invalid),
        ("https://[fe80::1]/", "", Forbidden(LinkLocal)),
        ("https://[fec0::1]/", "", Forbidden(LinkLocal)),
        ("https://[fd00:ec2::254]/", "", Forbidden(CloudMetadata)),
        ("https://[fc00::1]/", "", Forbidden(UniqueLocal)),
        ("https://[ff02::1]/", "", Forbidden(Multicast)),
        ("https://[2001:db8::1]/", "", Forbidden(Documentation)),
        ("https://[2606:4700::1111]/", "", Allowed),
        // IPv4 special-purpose blocks.
        ("https://10.0.0.1/", "", Forbidden(Private)),
        ("https://172.16.5.4/", "", Forbidden(Private)),
        ("https://172.31.255.255/", "", Forbidden(Private)),
        ("https://192.168.0.1/", "", Forbidden(Private)),
        (
            "https://169.254.169.254/latest/meta-data/",
            "",
            Forbidden(CloudMetadata),
        ),
        ("http://169.254.169.254/", "169.254.169.254/32", Allowed),
        ("https://169.254.1.1/", "", Forbidden(LinkLocal)),
        ("https://100.64.0.1/", "", Forbidden(SharedAddressSpace)),
        ("https://192.0.2.1/", "", Forbidden(Documentation)),
        ("https://198.51.100.1/", "", Forbidden(Documentation)),
        ("https://203.0.113.9/", "", Forbidden(Documentation)),
        ("https://198.18.0.1/", "", Forbidden(Benchmarking)),
        ("https://224.0.0.1/", "", Forbidden(Multicast)),
        ("https://255.255.255.255/", "", Forbidden(Broadcast)),
        ("https://240.0.0.1/", "", Forbidden(Reserved)),
        ("https://192.0.0.8/", "", Forbidden(Reserved)),
        // Metadata names, whatever they resolve to.
        (
            "https://metadata.google.internal/computeMetadata/v1/",
            "",
            Metadata,
        ),
        ("https://METADATA.google.internal./", "", Metadata),
        // Credentials, schemes, garbage.
        ("https://user:pass@public.test/", "", Credentials),
        ("https://public.test@127.0.0.1/", "", Credentials),
        ("ftp://public.test/", "", Scheme),
        ("file:///etc/passwd", "", Scheme),
        ("gopher://127.0.0.1:6379/_", "", Scheme),
        ("javascript:alert(1)", "", Scheme),
        ("not a url", "", Invalid),
        ("//public.test/hook", "", Invalid),
        ("https://", "", Invalid),
        // Names: every resolved address counts.
        ("https://private.test/", "", Forbidden(Private)),
        ("http://private.test/", "10.0.0.0/8", Allowed),
        ("https://mixed.test/", "", Forbidden(Private)),
        ("https://v6private.test/", "", Forbidden(UniqueLocal)),
        ("https://v6mapped.test/", "", Forbidden(CloudMetadata)),
        ("http://loop.test/", "127.0.0.0/8", Allowed),
        ("http://loop.test/", "", Forbidden(Loopback)),
        ("https://loop.test./", "", Forbidden(Loopback)),
        ("https://nowhere.test/", "", Unresolvable),
        ("https://empty.test/", "", Unresolvable),
    ];
    let lookup = table();
    let mut failures = Vec::new();
    for &(url, allow, expected) in cases {
        let allow: AllowList = allow.parse().unwrap();
        let policy = EndpointPolicy::new(allow.clone()).with_lookup(lookup.clone());
        let actual = match policy.check_endpoint(url).await {
            Ok(_) => Allowed,
            Err(refusal) => {
                // Every refusal explains itself.
                assert!(!refusal.to_string().is_empty());
                kind(&refusal)
            }
        };
        if actual != expected {
            failures.push(format!(
                "{url} (allow `{allow}`): expected {expected:?}, got {actual:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn localhost_resolved_by_the_system_is_refused() {
    let policy = EndpointPolicy::default();
    for url in ["http://localhost:8080/hook", "https://localhost/hook"] {
        let refusal = policy.check_endpoint(url).await.unwrap_err();
        assert!(
            matches!(
                refusal,
                Refusal::ForbiddenAddress {
                    class: AddressClass::Loopback,
                    ..
                }
            ),
            "{url}: {refusal:?}"
        );
    }
}

#[test]
fn refusal_messages_say_what_to_do() {
    let policy = EndpointPolicy::default();
    let message = policy
        .check_url("http://10.1.2.3/hook")
        .unwrap_err()
        .to_string();
    assert!(message.contains("10.1.2.3"), "{message}");
    assert!(message.contains("--subscription-allow"), "{message}");
    let message = policy
        .check_url("http://93.184.216.34/")
        .unwrap_err()
        .to_string();
    assert!(message.contains("use https"), "{message}");
}

#[test]
fn allow_list_parses_commas_spaces_and_bare_addresses() {
    let allow: AllowList = "127.0.0.0/8, ::1  10.1.2.3/8".parse().unwrap();
    let networks: Vec<String> = allow.networks().iter().map(ToString::to_string).collect();
    assert_eq!(networks, ["127.0.0.0/8", "::1/128", "10.0.0.0/8"]);
    assert!(allow.contains("10.200.0.1".parse().unwrap()));
    assert!(!allow.contains("11.0.0.1".parse().unwrap()));
    assert!("".parse::<AllowList>().unwrap().is_empty());
    let error = "127.0.0.0/8,localhost".parse::<AllowList>().unwrap_err();
    assert!(error.to_string().contains("localhost"));
    assert!("10.0.0.0/33".parse::<AllowList>().is_err());
}

#[test]
fn config_from_toml_rejects_unknown_fields() {
    let config: EndpointPolicyConfig = toml::from_str(r#"allow = ["127.0.0.0/8", "::1"]"#).unwrap();
    let policy = EndpointPolicy::from_config(&config);
    assert!(policy.check_url("http://127.0.0.1:1/").is_ok());
    assert!(policy.check_url("http://[::1]:1/").is_ok());
    assert!(policy.check_url("http://10.0.0.1/").is_err());

    let empty: EndpointPolicyConfig = toml::from_str("").unwrap();
    assert!(empty.allow.is_empty());
    assert!(toml::from_str::<EndpointPolicyConfig>("alow = []").is_err());
    assert!(toml::from_str::<EndpointPolicyConfig>(r#"allow = ["nope"]"#).is_err());
    // Round trip through the serialised form.
    let text = toml::to_string(&config).unwrap();
    assert_eq!(
        toml::from_str::<EndpointPolicyConfig>(&text).unwrap(),
        config
    );
}
