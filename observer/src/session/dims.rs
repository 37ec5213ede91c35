//! The reduced dimensions a session keeps: client networks (truncated addresses), user-agent
//! families and route templates. Each reduction runs before anything is stored.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize, Serializer};

/// How much of a client address is kept.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientIpMode {
    /// Keep the network (`ipv4_prefix`, `ipv6_prefix` bits).
    #[default]
    Truncate,
    /// Keep the whole address.
    Full,
    /// Keep nothing: every client is in one network, `redacted`.
    Drop,
}

/// A client network: a truncated address and its prefix length.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Network {
    Net {
        addr: IpAddr,
        prefix: u8,
    },
    /// The address was not learned.
    Unknown,
    /// Addresses are not kept (`client_ip = "drop"`).
    Redacted,
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Net { addr, prefix } => write!(f, "{addr}/{prefix}"),
            Self::Unknown => f.write_str("unknown"),
            Self::Redacted => f.write_str("redacted"),
        }
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Truncate `ip` to its network: `ipv4_prefix` / `ipv6_prefix` bits in `Truncate` mode.
/// IPv4-mapped IPv6 addresses are treated as IPv4.
pub fn network_of(ip: IpAddr, mode: ClientIpMode, ipv4_prefix: u8, ipv6_prefix: u8) -> Network {
    let ip = ip.to_canonical();
    if ip.is_unspecified() {
        return Network::Unknown;
    }
    match (mode, ip) {
        (ClientIpMode::Drop, _) => Network::Redacted,
        (ClientIpMode::Full, IpAddr::V4(_)) => Network::Net {
            addr: ip,
            prefix: 32,
        },
        (ClientIpMode::Full, IpAddr::V6(_)) => Network::Net {
            addr: ip,
            prefix: 128,
        },
        (ClientIpMode::Truncate, IpAddr::V4(v4)) => {
            let prefix = ipv4_prefix.min(32);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            Network::Net {
                addr: IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask)),
                prefix,
            }
        }
        (ClientIpMode::Truncate, IpAddr::V6(v6)) => {
            let prefix = ipv6_prefix.min(128);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            Network::Net {
                addr: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)),
                prefix,
            }
        }
    }
}

/// Non-browser clients recognised by their first product token (lower-case name, shown
/// name). Any other product name is only ever kept as a keyed fingerprint: a custom user
/// agent may name a person or a host.
const CLIENTS: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("wget", "Wget"),
    ("python-requests", "python-requests"),
    ("python-httpx", "python-httpx"),
    ("python-urllib", "Python-urllib"),
    ("python", "Python"),
    ("aiohttp", "aiohttp"),
    ("go-http-client", "Go-http-client"),
    ("okhttp", "okhttp"),
    ("apache-httpclient", "Apache-HttpClient"),
    ("java-http-client", "Java-http-client"),
    ("java", "Java"),
    ("axios", "axios"),
    ("node-fetch", "node-fetch"),
    ("node", "node"),
    ("undici", "undici"),
    ("postmanruntime", "PostmanRuntime"),
    ("insomnia", "insomnia"),
    ("httpie", "HTTPie"),
    ("k6", "k6"),
    ("dart", "Dart"),
    ("reqwest", "reqwest"),
    ("hyper", "hyper"),
    ("libwww-perl", "libwww-perl"),
    ("ruby", "Ruby"),
    ("faraday", "Faraday"),
    ("guzzlehttp", "GuzzleHttp"),
    ("bun", "Bun"),
    ("deno", "Deno"),
    ("grpc-go", "grpc-go"),
    ("kube-probe", "kube-probe"),
    ("prometheus", "Prometheus"),
    ("elb-healthchecker", "ELB-HealthChecker"),
];

fn major(version: &str) -> Option<&str> {
    let end = version
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(version.len());
    (end > 0).then(|| &version[..end.min(6)])
}

fn with_major(family: &str, version: &str) -> String {
    match major(version) {
        Some(m) => format!("{family}/{m}"),
        None => family.to_string(),
    }
}

/// A `User-Agent` reduced: a known family, or the product name of a client we do not
/// know (to be fingerprinted by the caller, never kept raw).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Agent {
    /// `curl/8`, `Chrome/120`, `other` (an unknown browser), `none` (absent).
    Known(String),
    /// The lower-cased product name of any other client (`shop-app`).
    Product(String),
}

/// Longest product name fingerprinted; longer ones are cut.
const MAX_PRODUCT: usize = 64;

/// Reduce a `User-Agent` to family and major version (`curl/8`, `Chrome/120`), `other`
/// for unknown browsers, `none` when absent, or the product name of any other client.
pub fn agent_family(ua: Option<&str>) -> Agent {
    let known = |s: String| Agent::Known(s);
    let ua = ua.map(str::trim).unwrap_or_default();
    if ua.is_empty() {
        return known("none".into());
    }
    let products: Vec<(&str, &str)> = ua
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ';')
        .filter_map(|t| t.split_once('/'))
        .collect();
    let find = |name: &str| {
        products
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    if ua.starts_with("Mozilla/") {
        let browsers: [(&[&str], &str); 6] = [
            (&["Edg", "EdgA", "EdgiOS", "Edge"], "Edge"),
            (&["OPR", "OPiOS"], "Opera"),
            (&["HeadlessChrome"], "HeadlessChrome"),
            (&["Firefox", "FxiOS"], "Firefox"),
            (&["Chrome", "CriOS"], "Chrome"),
            (&["Version"], "Safari"),
        ];
        for (names, family) in browsers {
            for name in names {
                if let Some(v) = find(name) {
                    if family == "Safari" && find("Safari").is_none() {
                        continue;
                    }
                    return known(with_major(family, v));
                }
            }
        }
        return known("other".into());
    }
    let first = ua.split_whitespace().next().unwrap_or_default();
    let (name, version) = first.split_once('/').unwrap_or((first, ""));
    if let Some((_, shown)) = CLIENTS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        return known(with_major(shown, version));
    }
    let product: String = name
        .chars()
        .take(MAX_PRODUCT)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    // A product token is an HTTP token; anything else says nothing about the client.
    if product.is_empty()
        || !product
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return known("other".into());
    }
    Agent::Product(product)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let tr = |s: &str| network_of(ip(s), ClientIpMode::Truncate, 24, 48).to_string();
        assert_eq!(tr("192.168.7.201"), "192.168.7.0/24");
        assert_eq!(tr("2001:db8:1:2:3::9"), "2001:db8:1::/48");
        assert_eq!(tr("::ffff:10.1.2.3"), "10.1.2.0/24");
        assert_eq!(tr("0.0.0.0"), "unknown");
        assert_eq!(
            network_of(ip("10.1.2.3"), ClientIpMode::Truncate, 16, 64).to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(
            network_of(ip("10.1.2.3"), ClientIpMode::Truncate, 0, 0).to_string(),
            "0.0.0.0/0"
        );
        assert_eq!(
            network_of(ip("10.1.2.3"), ClientIpMode::Full, 24, 48).to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            network_of(ip("::1"), ClientIpMode::Full, 24, 48).to_string(),
            "::1/128"
        );
        assert_eq!(
            network_of(ip("10.1.2.3"), ClientIpMode::Drop, 24, 48).to_string(),
            "redacted"
        );
        let n = network_of(ip("10.1.2.3"), ClientIpMode::Truncate, 24, 48);
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"10.1.2.0/24\"");
        assert!(!format!("{n:?}").contains("10.1.2.3"));
    }

    #[test]
    fn agents() {
        let f = |s: &str| match agent_family(Some(s)) {
            Agent::Known(k) => k,
            Agent::Product(p) => format!("product:{p}"),
        };
        assert_eq!(f("curl/8.5.0"), "curl/8");
        assert_eq!(f("python-requests/2.31.0"), "python-requests/2");
        assert_eq!(f("Go-http-client/1.1"), "Go-http-client/1");
        assert_eq!(f("okhttp/4.12.0"), "okhttp/4");
        assert_eq!(f("PostmanRuntime/7.36.0"), "PostmanRuntime/7");
        assert_eq!(f("Wget"), "Wget");
        assert_eq!(
            f("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"),
            "Chrome/120"
        );
        assert_eq!(
            f("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.61"),
            "Edge/120"
        );
        assert_eq!(
            f("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"),
            "Firefox/121"
        );
        assert_eq!(
            f("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15"),
            "Safari/17"
        );
        assert_eq!(f("Mozilla/5.0 (compatible; Googlebot/2.1)"), "other");
        // Custom clients are told apart by product name (the caller fingerprints it).
        assert_eq!(f("MyApp/1.0 (alice@example.com)"), "product:myapp");
        assert_eq!(f("shop-app/2.1"), "product:shop-app");
        assert_eq!(f("Shop-App/3.0"), "product:shop-app");
        assert_eq!(f("mobile/5.0"), "product:mobile");
        assert_eq!(f("\u{1}\u{2}/1"), "other");
        assert_eq!(f("   "), "none");
        assert_eq!(agent_family(None), Agent::Known("none".into()));
        assert_eq!(f("curl/"), "curl");
    }
}
