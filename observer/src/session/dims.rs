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
/// name). Anything else is `other`: a custom user agent may name a person or a host.
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

/// Reduce a `User-Agent` to family and major version: `curl/8`, `Chrome/120`, `other`, or
/// `none` when absent.
pub fn agent_family(ua: Option<&str>) -> String {
    let ua = ua.map(str::trim).unwrap_or_default();
    if ua.is_empty() {
        return "none".into();
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
                    return with_major(family, v);
                }
            }
        }
        return "other".into();
    }
    let first = ua.split_whitespace().next().unwrap_or_default();
    let (name, version) = first.split_once('/').unwrap_or((first, ""));
    CLIENTS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, shown)| with_major(shown, version))
        .unwrap_or_else(|| "other".into())
}

/// Placeholder for an id segment.
pub const ID: &str = "{id}";
/// Most path segments kept in a template.
const MAX_SEGMENTS: usize = 12;
/// Longest template kept (bytes).
const MAX_TEMPLATE: usize = 200;

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Whether a path segment is an object id: a number, a UUID, hex of 8+ digits, a long
/// opaque token (20+ characters mixing letters and digits), anything with `@`, or
/// anything over 64 bytes.
pub fn is_id_segment(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) || is_uuid(s) || s.len() > 64 || s.contains('@') {
        return true;
    }
    if s.len() >= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return true;
    }
    s.len() >= 20
        && s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes().any(|b| b.is_ascii_alphabetic())
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'=' | b'+' | b'%')
        })
}

/// A normalised method: upper-case letters, else `OTHER`.
pub fn method_name(method: &str) -> String {
    if !method.is_empty() && method.len() <= 16 && method.bytes().all(|b| b.is_ascii_alphabetic()) {
        method.to_ascii_uppercase()
    } else {
        "OTHER".into()
    }
}

/// Template a path: id segments become `{id}` and are handed to `ids` (so callers can count
/// distinct ids without storing the path). Long paths are cut to 12 segments / 200 bytes.
pub fn template_path<'a>(path: &'a str, ids: &mut Vec<&'a str>) -> String {
    if !path.starts_with('/') {
        let mut s: String = path.chars().take(32).collect();
        if s.is_empty() {
            s.push('/');
        }
        return s;
    }
    let mut out = String::with_capacity(path.len().min(MAX_TEMPLATE));
    for (n, seg) in path[1..].split('/').enumerate() {
        if n == MAX_SEGMENTS || out.len() > MAX_TEMPLATE {
            out.push_str("/{...}");
            break;
        }
        out.push('/');
        if is_id_segment(seg) {
            ids.push(seg);
            out.push_str(ID);
        } else {
            let room = MAX_TEMPLATE.saturating_sub(out.len()).max(1);
            out.extend(seg.chars().take(room));
        }
    }
    out
}

/// `GET /users/{id}/orders`.
pub fn route(method: &str, path: &str, ids: &mut Vec<u64>, hash: impl Fn(&str) -> u64) -> String {
    let mut segs = Vec::new();
    let template = template_path(path, &mut segs);
    ids.extend(segs.into_iter().map(hash));
    format!("{} {template}", method_name(method))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(path: &str) -> String {
        template_path(path, &mut Vec::new())
    }

    #[test]
    fn templates() {
        assert_eq!(t("/users/42/orders"), "/users/{id}/orders");
        assert_eq!(
            t("/orders/550e8400-e29b-41d4-a716-446655440000"),
            "/orders/{id}"
        );
        assert_eq!(t("/blobs/deadbeef01"), "/blobs/{id}");
        assert_eq!(t("/blobs/DEADBEEF"), "/blobs/{id}");
        assert_eq!(t("/s/aB3dE5fG7hJ9kL1mN3pQ5r"), "/s/{id}");
        assert_eq!(t("/users/alice@example.com"), "/users/{id}");
        assert_eq!(t("/a/1/b/2"), "/a/{id}/b/{id}");
        // Not ids: words, short hex, versions, long words without digits, dates.
        assert_eq!(t("/api/v1/users"), "/api/v1/users");
        assert_eq!(t("/cafe/abc123"), "/cafe/abc123");
        assert_eq!(
            t("/docs/getting-started-with-the-api"),
            "/docs/getting-started-with-the-api"
        );
        assert_eq!(t("/reports/2024-01-31"), "/reports/2024-01-31");
        assert_eq!(t("/"), "/");
        assert_eq!(t(""), "/");
        assert_eq!(t("*"), "*");
        assert_eq!(t("/x/"), "/x/");
        assert_eq!(t(&format!("/f/{}", "a".repeat(65))), "/f/{id}");
        let long: String = (0..30).map(|i| format!("/s{i}")).collect();
        assert!(t(&long).ends_with("/{...}"));
        assert!(t(&format!("/{}", "x".repeat(60)).repeat(10)).len() <= MAX_TEMPLATE + 70);
    }

    #[test]
    fn route_and_ids() {
        let mut ids = Vec::new();
        let r = route("get", "/users/7/orders/8", &mut ids, |s| s.parse().unwrap());
        assert_eq!(r, "GET /users/{id}/orders/{id}");
        assert_eq!(ids, vec![7, 8]);
        assert_eq!(method_name("PO ST"), "OTHER");
        assert_eq!(method_name(""), "OTHER");
    }

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
        let f = |s: &str| agent_family(Some(s));
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
        assert_eq!(f("MyApp/1.0 (alice@example.com)"), "other");
        assert_eq!(f("   "), "none");
        assert_eq!(agent_family(None), "none");
        assert_eq!(f("curl/"), "curl");
    }
}
