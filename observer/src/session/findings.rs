//! Findings: facts about an API or its transport rather than about one session, e.g.
//! credentials sent in plaintext or in query strings. Reported once per host and route
//! (`GET /api/findings`, `api_observer_findings`), not as every session's signal.

use std::{borrow::Cow, sync::Arc, time::SystemTime};

use serde::Serialize;

use super::window::FastMap;
use crate::clock::ser_unix;

/// Most (finding, host, route) entries kept; later ones are counted as dropped.
pub const MAX_FINDINGS: usize = 1000;
/// Longest host name kept.
const MAX_HOST: usize = 64;

/// What was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Credentials sent without TLS between different hosts.
    PlaintextCredential,
    /// Credentials sent in the URL's query string (they end up in logs and histories).
    CredentialInQuery,
}

impl FindingKind {
    pub const ALL: [Self; 2] = [Self::PlaintextCredential, Self::CredentialInQuery];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlaintextCredential => "plaintext_credential",
            Self::CredentialInQuery => "credential_in_query",
        }
    }
}

#[derive(Clone, Debug)]
struct FindingStat {
    requests: u64,
    /// Of which came from untrusted client networks.
    untrusted: u64,
    first_seen: SystemTime,
    last_seen: SystemTime,
}

/// One finding as shown by the API.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Finding {
    pub finding: FindingKind,
    /// The API's host (`Host` header, else the server address).
    pub host: String,
    /// Method and path template.
    pub route: String,
    pub requests: u64,
    pub untrusted_requests: u64,
    #[serde(serialize_with = "ser_unix")]
    pub first_seen: SystemTime,
    #[serde(serialize_with = "ser_unix")]
    pub last_seen: SystemTime,
}

/// Findings of this host, bounded.
#[derive(Debug, Default)]
pub struct Findings {
    map: FastMap<(FindingKind, Arc<str>, Arc<str>), FindingStat>,
    /// The hosts of `map`, so that recording a known finding allocates nothing.
    hosts: FastMap<Box<str>, Arc<str>>,
    pub dropped: u64,
}

fn host_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b':' | b'[' | b']')
}

/// A host name as kept: lower case, at most 64 characters of `[a-z0-9.-:[]]`. Borrowed
/// when the header is already in that form (the usual case).
pub fn host_name(host: &str) -> Cow<'_, str> {
    let host = host.trim();
    if host.len() <= MAX_HOST && host.bytes().all(host_char) {
        return Cow::Borrowed(host);
    }
    Cow::Owned(
        host.bytes()
            .take(MAX_HOST)
            .map(|c| c.to_ascii_lowercase())
            .filter(|c| host_char(*c))
            .map(char::from)
            .collect(),
    )
}

impl Findings {
    pub fn record(
        &mut self,
        kind: FindingKind,
        host: &str,
        route: &Arc<str>,
        untrusted: bool,
        t: SystemTime,
    ) {
        let host = match self.hosts.get(host) {
            Some(h) => Arc::clone(h),
            None => Arc::from(host),
        };
        let key = (kind, host, Arc::clone(route));
        let full = self.map.len() >= MAX_FINDINGS;
        let f = match self.map.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                if full {
                    self.dropped += 1;
                    return;
                }
                let host = Arc::clone(&v.key().1);
                self.hosts
                    .entry(Box::from(&*host))
                    .or_insert_with(|| Arc::clone(&host));
                v.insert(FindingStat {
                    requests: 0,
                    untrusted: 0,
                    first_seen: t,
                    last_seen: t,
                })
            }
        };
        f.requests += 1;
        f.untrusted += u64::from(untrusted);
        f.first_seen = f.first_seen.min(t);
        f.last_seen = f.last_seen.max(t);
    }

    /// Every finding, by kind, host and route.
    pub fn list(&self) -> Vec<Finding> {
        let mut v: Vec<Finding> = self
            .map
            .iter()
            .map(|((kind, host, route), f)| Finding {
                finding: *kind,
                host: host.to_string(),
                route: route.to_string(),
                requests: f.requests,
                untrusted_requests: f.untrusted,
                first_seen: f.first_seen,
                last_seen: f.last_seen,
            })
            .collect();
        v.sort_by(|a, b| (a.finding, &a.host, &a.route).cmp(&(b.finding, &b.host, &b.route)));
        v
    }

    /// Distinct host/route pairs per kind.
    pub fn count(&self, kind: FindingKind) -> usize {
        self.map.keys().filter(|(k, _, _)| *k == kind).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn once_per_host_and_route() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut f = Findings::default();
        let r: Arc<str> = Arc::from("GET /items/{id}");
        for i in 0..5 {
            f.record(FindingKind::PlaintextCredential, "api.local", &r, i == 0, t);
        }
        f.record(FindingKind::CredentialInQuery, "api.local", &r, false, t);
        let l = f.list();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].finding, FindingKind::PlaintextCredential);
        assert_eq!((l[0].requests, l[0].untrusted_requests), (5, 1));
        assert_eq!(f.count(FindingKind::PlaintextCredential), 1);
        assert_eq!(host_name(" API.Example.com:8080 "), "api.example.com:8080");
        assert_eq!(host_name("a b<script>"), "abscript");
    }

    #[test]
    fn bounded() {
        let t = SystemTime::UNIX_EPOCH;
        let mut f = Findings::default();
        for i in 0..MAX_FINDINGS + 5 {
            let r: Arc<str> = Arc::from(format!("GET /r{i}"));
            f.record(FindingKind::CredentialInQuery, "h", &r, false, t);
        }
        assert_eq!(f.list().len(), MAX_FINDINGS);
        assert_eq!(f.dropped, 5);
    }
}
