//! Trusted client networks (`scoring.trusted_networks`): where a credential sent in
//! plaintext or in a query string is a fact about the API's transport (a finding), not
//! evidence about the session that sent it.

use std::net::IpAddr;

use ipnet::IpNet;

/// A bad entry of `trusted_networks`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{entry:?} is not a network (expected CIDR like 10.0.0.0/8 or fd00::/8)")]
pub struct TrustError {
    pub entry: String,
}

/// A set of networks, checked against full client addresses before they are truncated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedNetworks(Vec<IpNet>);

impl TrustedNetworks {
    /// Loopback, private (RFC 1918, RFC 4193), link-local and carrier-grade NAT ranges:
    /// traffic from them stays inside the operator's own networks.
    pub const DEFAULT: &'static [&'static str] = &[
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ];

    pub fn parse(entries: &[String]) -> Result<Self, TrustError> {
        entries
            .iter()
            .map(|e| {
                let e = e.trim();
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| TrustError {
                        entry: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Result<TrustedNetworks, TrustError> {
        TrustedNetworks::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn defaults_cover_private_and_loopback_only() {
        let t = nets(TrustedNetworks::DEFAULT).unwrap();
        for ip in [
            "127.0.0.1",
            "10.200.3.2",
            "172.20.1.1",
            "192.168.1.9",
            "::1",
            "fd12::1",
        ] {
            assert!(t.contains(ip.parse().unwrap()), "{ip}");
        }
        // IPv4-mapped IPv6 is judged as IPv4.
        assert!(t.contains("::ffff:10.1.2.3".parse().unwrap()));
        for ip in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "::ffff:1.2.3.4"] {
            assert!(!t.contains(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn bad_entries_are_named() {
        assert_eq!(
            nets(&["10.0.0.0/8", "10.0.0/33"]).unwrap_err().entry,
            "10.0.0/33"
        );
        assert!(nets(&["office"]).is_err());
        // A bare address is a /32 (or /128).
        assert!(nets(&["203.0.113.7"])
            .unwrap()
            .contains("203.0.113.7".parse().unwrap()));
    }
}
