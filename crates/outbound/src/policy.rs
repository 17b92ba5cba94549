//! Which endpoints Flare may call: the guard against server-side request forgery (SSRF).
//!
//! A user-supplied URL is checked in two steps:
//!
//! 1. [`EndpointPolicy::check_url`], without I/O: scheme, credentials, host form, IP literals
//!    (the `url` crate has already turned `http://2130706433/`, `http://0177.0.0.1/` and
//!    `http://0x7f.1/` into `127.0.0.1`, and refused IPv6 zone ids), known metadata names.
//! 2. [`EndpointPolicy::resolve`], after DNS resolution: **every** resolved address must be
//!    allowed, or the endpoint is refused. The HTTP client connects only to the addresses this
//!    step returned (see [`crate::http`]), so a name cannot be re-pointed between check and
//!    connect (DNS rebinding).
//!
//! An address is allowed when it is in the [`AllowList`], or when it is a global unicast
//! address (not loopback, private, link-local, shared, documentation, multicast, ...) reached
//! over `https`. Plain `http` goes only to allow-listed addresses.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::{Host, Url};

/// Host names of cloud metadata services, refused whatever they resolve to.
const METADATA_HOSTS: &[&str] = &["metadata.google.internal", "metadata.goog"];

/// Networks (IP addresses or CIDR blocks) Flare may call although they are not public, and
/// over plain `http`: `127.0.0.0/8`, `10.1.2.3`, `::1/128`.
///
/// From the command line or environment (`--subscription-allow`, `FLARE_SUBSCRIPTION_ALLOW`)
/// as a comma- or space-separated string (see [`FromStr`]); in TOML as a list of strings.
/// Default: empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    networks: Vec<IpNet>,
}

impl AllowList {
    /// An allow-list of these networks.
    pub fn new(networks: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            networks: networks.into_iter().collect(),
        }
    }

    /// Whether `address` (or, for an IPv4-mapped IPv6 address, its IPv4 form) is allow-listed.
    pub fn contains(&self, address: IpAddr) -> bool {
        let mapped = embedded_ipv4(address).map(IpAddr::V4);
        self.networks
            .iter()
            .any(|net| net.contains(&address) || mapped.is_some_and(|v4| net.contains(&v4)))
    }

    /// The networks, in the order given.
    pub fn networks(&self) -> &[IpNet] {
        &self.networks
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

/// An allow-list entry that is neither an IP address nor a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an IP address or CIDR block (expected e.g. `127.0.0.0/8` or `::1`)")]
pub struct InvalidAllowEntry(pub String);

fn parse_network(entry: &str) -> Result<IpNet, InvalidAllowEntry> {
    let entry = entry.trim();
    if let Ok(net) = entry.parse::<IpNet>() {
        // `10.1.2.3/8` means the block 10.0.0.0/8.
        return Ok(net.trunc());
    }
    entry
        .parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| InvalidAllowEntry(entry.to_owned()))
}

impl FromStr for AllowList {
    type Err = InvalidAllowEntry;

    /// Parses `"127.0.0.0/8, ::1  10.0.0.5"`: entries separated by commas and/or whitespace.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|entry| !entry.is_empty())
            .map(parse_network)
            .collect::<Result<Vec<_>, _>>()
            .map(|networks| Self { networks })
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.networks.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

impl Serialize for AllowList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.networks.iter().map(ToString::to_string))
    }
}

impl<'de> Deserialize<'de> for AllowList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(deserializer)?;
        entries
            .iter()
            .map(|entry| parse_network(entry))
            .collect::<Result<Vec<_>, _>>()
            .map(|networks| Self { networks })
            .map_err(serde::de::Error::custom)
    }
}

/// What kind of non-public address a destination is; part of a [`Refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AddressClass {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `0.0.0.0/8` ("this network"), `::`.
    Unspecified,
    /// RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    Private,
    /// Unique local IPv6, `fc00::/7`.
    UniqueLocal,
    /// `169.254.0.0/16`, `fe80::/10` (and the deprecated site-local `fec0::/10`).
    LinkLocal,
    /// A cloud instance metadata service: `169.254.169.254`, `fd00:ec2::254`.
    CloudMetadata,
    /// Carrier-grade NAT shared address space, `100.64.0.0/10`.
    SharedAddressSpace,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15`.
    Benchmarking,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Other special-purpose blocks: `192.0.0.0/24`, `240.0.0.0/4`, `100::/64`, the
    /// IPv4-compatible `::/96`.
    Reserved,
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Loopback => "a loopback address",
            Self::Unspecified => "an unspecified (\"this host\") address",
            Self::Private => "a private network address (RFC 1918)",
            Self::UniqueLocal => "a unique local IPv6 address (fc00::/7)",
            Self::LinkLocal => "a link-local address",
            Self::CloudMetadata => "a cloud metadata service address",
            Self::SharedAddressSpace => "a carrier-grade NAT address (100.64.0.0/10)",
            Self::Documentation => "a documentation-only address",
            Self::Benchmarking => "a benchmarking address (198.18.0.0/15)",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::Reserved => "a reserved special-purpose address",
        })
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::/96`) or
/// 6to4 (`2002::/16`) IPv6 address: each can reach the IPv4 host it embeds.
fn embedded_ipv4(address: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = address else {
        return None;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let low32 =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(low32(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(low32(s[1], s[2]));
    }
    None
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => AddressClass::CloudMetadata,
        _ if ip.is_broadcast() => AddressClass::Broadcast,
        (0, _, _) => AddressClass::Unspecified,
        (127, _, _) => AddressClass::Loopback,
        (10, _, _) | (192, 168, _) => AddressClass::Private,
        (172, 16..=31, _) => AddressClass::Private,
        (169, 254, _) => AddressClass::LinkLocal,
        (100, 64..=127, _) => AddressClass::SharedAddressSpace,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddressClass::Documentation,
        (198, 18..=19, _) => AddressClass::Benchmarking,
        (224..=239, _, _) => AddressClass::Multicast,
        (192, 0, 0) | (240..=255, _, _) => AddressClass::Reserved,
        _ => return None,
    })
}

/// The class of a non-public address, or `None` for a global unicast address.
pub fn classify(address: IpAddr) -> Option<AddressClass> {
    match address {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(address) {
                return classify_v4(v4);
            }
            let s = v6.segments();
            Some(match s[0] {
                _ if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => {
                    AddressClass::CloudMetadata
                }
                _ if v6.is_unspecified() => AddressClass::Unspecified,
                _ if v6.is_loopback() => AddressClass::Loopback,
                // `::/96` (IPv4-compatible, deprecated) and the rest of `::/8`.
                0 => AddressClass::Reserved,
                0x0100 if s[1..4] == [0, 0, 0] => AddressClass::Reserved,
                0x2001 if s[1] == 0x0db8 => AddressClass::Documentation,
                0x3fff if s[1] < 0x1000 => AddressClass::Documentation,
                0xfc00..=0xfdff => AddressClass::UniqueLocal,
                0xfe80..=0xfeff => AddressClass::LinkLocal,
                0xff00..=0xffff => AddressClass::Multicast,
                _ => return None,
            })
        }
    }
}

/// Why an endpoint was refused. Each message says what the user can change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("`{url}` is not a valid URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("scheme `{scheme}` is not supported: use an https URL")]
    UnsupportedScheme { scheme: String },
    #[error(
        "the URL carries credentials (`user:password@`); pass them in a header (e.g. \
         Subscription.channel.header) instead"
    )]
    CredentialsInUrl,
    #[error("the URL has no host")]
    MissingHost,
    #[error("`{host}` is a cloud metadata service")]
    MetadataHost { host: String },
    #[error(
        "`{host}` is {class} ({address}); only addresses on the allow-list \
         (--subscription-allow / FLARE_SUBSCRIPTION_ALLOW) may be called"
    )]
    ForbiddenAddress {
        host: String,
        address: IpAddr,
        class: AddressClass,
    },
    #[error(
        "plain http is allowed only to allow-listed addresses and `{host}` ({address}) is not \
         on the allow-list: use https"
    )]
    PlainHttp { host: String, address: IpAddr },
    #[error("`{host}` does not resolve: {reason}")]
    Unresolvable { host: String, reason: String },
    #[error("more than {max} redirects")]
    TooManyRedirects { max: u8 },
    #[error("redirect ({status}) without a usable Location header")]
    BadRedirect { status: u16 },
}

/// A URL that passed [`EndpointPolicy::check_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUrl {
    url: Url,
    /// Set when the host is an IP literal: there is nothing to resolve.
    literal: Option<IpAddr>,
}

impl CheckedUrl {
    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn into_url(self) -> Url {
        self.url
    }

    /// Whether the URL is plain `http` (allowed only to allow-listed addresses).
    pub fn is_plain_http(&self) -> bool {
        self.url.scheme() == "http"
    }

    /// The host as a string without IPv6 brackets: `example.org`, `10.0.0.1`, `::1`.
    pub fn host(&self) -> String {
        match self.url.host() {
            Some(Host::Ipv6(v6)) => v6.to_string(),
            Some(host) => host.to_string(),
            None => String::new(),
        }
    }
}

/// Looks up the addresses of a host name. The default is the system resolver; tests and
/// embedders can supply their own.
pub trait HostLookup: Send + Sync + 'static {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>>;
}

/// The operating system's resolver (`getaddrinfo` through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

impl HostLookup for SystemLookup {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, 0)).await?;
            Ok(addrs.map(|addr| addr.ip()).collect())
        })
    }
}

/// The endpoint policy in configuration: `[subscriptions.endpoints]` or wherever the embedding
/// component puts it. Every field has a default.
///
/// ```toml
/// allow = ["127.0.0.0/8", "::1"]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointPolicyConfig {
    /// Networks that may be called although not public, and over plain `http`.
    /// Default: empty (only public addresses, only `https`).
    pub allow: AllowList,
}

/// The guard every outbound call goes through. Cheap to clone.
#[derive(Clone)]
pub struct EndpointPolicy {
    allow: AllowList,
    lookup: Arc<dyn HostLookup>,
}

impl fmt::Debug for EndpointPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointPolicy")
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl Default for EndpointPolicy {
    /// Public `https` endpoints only.
    fn default() -> Self {
        Self::new(AllowList::default())
    }
}

impl EndpointPolicy {
    /// A policy with this allow-list and the system resolver.
    pub fn new(allow: AllowList) -> Self {
        Self {
            allow,
            lookup: Arc::new(SystemLookup),
        }
    }

    pub fn from_config(config: &EndpointPolicyConfig) -> Self {
        Self::new(config.allow.clone())
    }

    /// The same policy resolving names with `lookup` instead of the system resolver.
    pub fn with_lookup(mut self, lookup: Arc<dyn HostLookup>) -> Self {
        self.lookup = lookup;
        self
    }

    pub fn allow_list(&self) -> &AllowList {
        &self.allow
    }

    /// Checks one address reached under `host` (for the message) over http or https.
    pub fn check_address(
        &self,
        host: &str,
        address: IpAddr,
        plain_http: bool,
    ) -> Result<(), Refusal> {
        if self.allow.contains(address) {
            return Ok(());
        }
        if let Some(class) = classify(address) {
            return Err(Refusal::ForbiddenAddress {
                host: host.to_owned(),
                address,
                class,
            });
        }
        if plain_http {
            return Err(Refusal::PlainHttp {
                host: host.to_owned(),
                address,
            });
        }
        Ok(())
    }

    /// Parses and checks a URL without I/O. An IP-literal host is checked completely here;
    /// a host name still has to pass [`resolve`](Self::resolve).
    pub fn check_url(&self, url: &str) -> Result<CheckedUrl, Refusal> {
        let parsed = Url::parse(url.trim()).map_err(|e| Refusal::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        self.check_parsed(parsed)
    }

    /// [`check_url`](Self::check_url) for an already parsed URL (a redirect target).
    pub fn check_parsed(&self, url: Url) -> Result<CheckedUrl, Refusal> {
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(Refusal::UnsupportedScheme {
                    scheme: other.to_owned(),
                });
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal::CredentialsInUrl);
        }
        let plain_http = url.scheme() == "http";
        let literal = match url.host() {
            None => return Err(Refusal::MissingHost),
            Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            Some(Host::Domain(name)) => {
                if name.is_empty() {
                    return Err(Refusal::MissingHost);
                }
                let bare = name.trim_end_matches('.').to_ascii_lowercase();
                if METADATA_HOSTS.contains(&bare.as_str()) {
                    return Err(Refusal::MetadataHost {
                        host: name.to_owned(),
                    });
                }
                None
            }
        };
        let checked = CheckedUrl { url, literal };
        if let Some(address) = literal {
            self.check_address(&checked.host(), address, plain_http)?;
        }
        Ok(checked)
    }

    /// Resolves the host of a checked URL and checks **every** address; the connection must
    /// go to one of the returned addresses. A name with one forbidden address is refused even
    /// when its others are public, since the caller cannot choose which one is used.
    pub async fn resolve(&self, url: &CheckedUrl) -> Result<Vec<IpAddr>, Refusal> {
        if let Some(address) = url.literal {
            return Ok(vec![address]);
        }
        self.resolve_host(&url.host(), url.is_plain_http()).await
    }

    /// Resolves `host` and checks every address (see [`resolve`](Self::resolve)).
    pub async fn resolve_host(&self, host: &str, plain_http: bool) -> Result<Vec<IpAddr>, Refusal> {
        let bare = host.trim_end_matches('.').to_ascii_lowercase();
        if METADATA_HOSTS.contains(&bare.as_str()) {
            return Err(Refusal::MetadataHost {
                host: host.to_owned(),
            });
        }
        let addresses = self
            .lookup
            .lookup(host)
            .await
            .map_err(|e| Refusal::Unresolvable {
                host: host.to_owned(),
                reason: e.to_string(),
            })?;
        if addresses.is_empty() {
            return Err(Refusal::Unresolvable {
                host: host.to_owned(),
                reason: "no addresses".to_owned(),
            });
        }
        for &address in &addresses {
            self.check_address(host, address, plain_http)?;
        }
        Ok(addresses)
    }

    /// Both steps: what a component runs when a user registers an endpoint, to refuse it
    /// with a reason at once rather than at the first delivery.
    pub async fn check_endpoint(&self, url: &str) -> Result<CheckedUrl, Refusal> {
        let checked = self.check_url(url)?;
        self.resolve(&checked).await?;
        Ok(checked)
    }
}

/// Socket addresses for resolved IPs, port 0 (the HTTP client substitutes the URL's port).
pub(crate) fn socket_addrs(addresses: &[IpAddr]) -> Vec<SocketAddr> {
    addresses.iter().map(|&ip| SocketAddr::new(ip, 0)).collect()
}
