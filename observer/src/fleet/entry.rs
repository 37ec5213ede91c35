//! What one node publishes about one session (a compact, versioned JSON entry in the
//! session's hash, one field per node), and the fleet view merged from the other nodes'
//! entries. Pure: no store here.

use serde::{Deserialize, Serialize};

use crate::score::FleetFacts;

/// Version of the entry format. Entries of another version are skipped and counted.
pub const ENTRY_VERSION: u32 = 1;
/// Most client networks one entry lists.
pub const MAX_ENTRY_NETWORKS: usize = 16;
/// Most user-agent families one entry lists.
pub const MAX_ENTRY_FAMILIES: usize = 8;
/// Most reasons one entry lists (more than there are reason codes).
const MAX_ENTRY_REASONS: usize = 32;
/// Longest text item (network, family, reason, kind) an entry may hold.
const MAX_ITEM: usize = 80;
/// Longest node name.
pub const MAX_NODE_NAME: usize = 253;
/// Most other nodes' entries one session's fleet view keeps (the most recent).
pub const MAX_VIEW_NODES: usize = 64;
/// Most networks (and families) a merged view lists.
pub const MAX_MERGED: usize = 64;
/// Largest entry read back (bytes): anything longer is malformed.
const MAX_ENTRY_BYTES: usize = 8192;

/// One node's entry for one session. Field names are short: there is one per node per
/// live session in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Format version ([`ENTRY_VERSION`]).
    pub v: u32,
    /// Credential kind (`bearer`, `api_key`, ...).
    pub kind: String,
    /// Requests by status class: 1xx, 2xx, 3xx, 4xx, 5xx, other.
    pub c: [u64; 6],
    /// 401/403 responses within the window.
    pub f: u64,
    /// Client networks within the window, as the agent prints them (already truncated).
    pub n: Vec<String>,
    /// User-agent families within the window (known names or keyed fingerprints).
    pub a: Vec<String>,
    /// The node's score of the session.
    pub s: u8,
    /// The node's reasons.
    pub r: Vec<String>,
    /// Last seen on this node, unix seconds.
    pub t: u64,
}

/// Why an entry read back was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not JSON of the expected shape, or out of bounds.
    Malformed,
    /// Written by another version of the agent.
    OtherVersion,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Malformed => "malformed",
            Skip::OtherVersion => "other_version",
        }
    }
}

impl Entry {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decode an entry another node wrote; never trusts its sizes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Skip> {
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(Skip::Malformed);
        }
        #[derive(Deserialize)]
        struct Versioned {
            v: u32,
        }
        let v: Versioned = serde_json::from_slice(bytes).map_err(|_| Skip::Malformed)?;
        if v.v != ENTRY_VERSION {
            return Err(Skip::OtherVersion);
        }
        let e: Entry = serde_json::from_slice(bytes).map_err(|_| Skip::Malformed)?;
        let long = |items: &[String]| items.iter().any(|s| s.len() > MAX_ITEM);
        if e.n.len() > MAX_ENTRY_NETWORKS
            || e.a.len() > MAX_ENTRY_FAMILIES
            || e.r.len() > MAX_ENTRY_REASONS
            || e.s > 100
            || e.kind.len() > MAX_ITEM
            || long(&e.n)
            || long(&e.a)
            || long(&e.r)
        {
            return Err(Skip::Malformed);
        }
        Ok(e)
    }

    pub fn requests(&self) -> u64 {
        self.c.iter().sum()
    }
}

/// What the other nodes published about one session (their current entries), merged
/// into its scoring. Stale entries are kept here and ignored by [`FleetView::facts`],
/// so staleness is judged at scoring time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetView {
    /// (node, entry), most recent first, at most [`MAX_VIEW_NODES`].
    pub remote: Vec<(String, Entry)>,
}

/// Counts of the entries skipped while merging.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    pub malformed: u64,
    pub other_version: u64,
}

impl Skipped {
    pub fn add(&mut self, s: Skip) {
        match s {
            Skip::Malformed => self.malformed += 1,
            Skip::OtherVersion => self.other_version += 1,
        }
    }
}

impl FleetView {
    /// The view from a session hash's fields (node → entry), leaving out `this_node`'s
    /// own field; entries that do not decode are counted in `skipped`. Entries older
    /// than `window_secs` at `now_secs` are dropped (they can no longer count "at once").
    pub fn from_fields<'a>(
        this_node: &str,
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        now_secs: u64,
        window_secs: u64,
        skipped: &mut Skipped,
    ) -> Self {
        let mut remote = Vec::new();
        for (node, value) in fields {
            if node == this_node.as_bytes() {
                continue;
            }
            let Ok(node) = std::str::from_utf8(node) else {
                skipped.add(Skip::Malformed);
                continue;
            };
            if node.is_empty() || node.len() > MAX_NODE_NAME {
                skipped.add(Skip::Malformed);
                continue;
            }
            match Entry::decode(value) {
                Ok(e) if now_secs.saturating_sub(e.t) <= window_secs => {
                    remote.push((node.to_string(), e))
                }
                Ok(_) => {}
                Err(s) => skipped.add(s),
            }
        }
        remote.sort_by(|a, b| b.1.t.cmp(&a.1.t).then_with(|| a.0.cmp(&b.0)));
        remote.truncate(MAX_VIEW_NODES);
        Self { remote }
    }

    pub fn is_empty(&self) -> bool {
        self.remote.is_empty()
    }

    /// The entries still within the window at `now_secs`.
    fn live(&self, now_secs: u64, window_secs: u64) -> impl Iterator<Item = &(String, Entry)> {
        self.remote
            .iter()
            .filter(move |(_, e)| now_secs.saturating_sub(e.t) <= window_secs)
    }

    /// What scoring reads: nodes that used the credential within the window (this one
    /// counts when `local_active`), and the union of their client networks with
    /// `local_networks` (at most [`MAX_MERGED`]).
    pub fn facts(
        &self,
        local_networks: &[String],
        local_active: bool,
        now_secs: u64,
        window_secs: u64,
    ) -> FleetFacts {
        let mut nodes = usize::from(local_active);
        let mut networks: Vec<&str> = local_networks.iter().map(String::as_str).collect();
        for (_, e) in self.live(now_secs, window_secs) {
            nodes += 1;
            for n in &e.n {
                if networks.len() >= MAX_MERGED {
                    break;
                }
                if !networks.contains(&n.as_str()) {
                    networks.push(n);
                }
            }
        }
        networks.sort_unstable();
        networks.dedup();
        FleetFacts {
            nodes,
            networks: networks.len(),
        }
    }

    /// Times (unix seconds) at which an entry leaves the window: scoring must run again
    /// then.
    pub fn expiries(&self, window_secs: u64) -> impl Iterator<Item = u64> + '_ {
        self.remote.iter().map(move |(_, e)| e.t + window_secs + 1)
    }
}

/// One session across the fleet: the entries of every node merged (for the fleet list
/// and the session detail).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Merged {
    pub kind: String,
    /// Lowest score any node gave.
    pub score: u8,
    pub reasons: Vec<String>,
    pub nodes: Vec<String>,
    pub networks: Vec<String>,
    pub families: Vec<String>,
    pub requests: u64,
    pub failures: u64,
    pub status: [u64; 6],
    pub last_seen: u64,
}

impl Merged {
    /// Merge every node's entry (unions capped at [`MAX_MERGED`], sums, lowest score).
    pub fn of<'a>(entries: impl IntoIterator<Item = (&'a str, &'a Entry)>) -> Option<Self> {
        let mut m = Merged {
            score: 100,
            ..Default::default()
        };
        let mut any = false;
        let push = |list: &mut Vec<String>, v: &str| {
            if list.len() < MAX_MERGED && !list.iter().any(|x| x == v) {
                list.push(v.to_string());
            }
        };
        for (node, e) in entries {
            any = true;
            if m.kind.is_empty() {
                m.kind = e.kind.clone();
            }
            m.score = m.score.min(e.s);
            for r in &e.r {
                push(&mut m.reasons, r);
            }
            push(&mut m.nodes, node);
            for n in &e.n {
                push(&mut m.networks, n);
            }
            for a in &e.a {
                push(&mut m.families, a);
            }
            m.requests += e.requests();
            m.failures += e.f;
            for (a, b) in m.status.iter_mut().zip(e.c) {
                *a += b;
            }
            m.last_seen = m.last_seen.max(e.t);
        }
        for list in [
            &mut m.reasons,
            &mut m.nodes,
            &mut m.networks,
            &mut m.families,
        ] {
            list.sort();
        }
        any.then_some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn entry(n: &[&str], t: u64) -> Entry {
        Entry {
            v: ENTRY_VERSION,
            kind: "bearer".into(),
            c: [0, 5, 0, 1, 0, 0],
            f: 1,
            n: n.iter().map(|s| s.to_string()).collect(),
            a: vec!["curl/8".into()],
            s: 100,
            r: vec![],
            t,
        }
    }

    #[test]
    fn entries_round_trip_and_bad_ones_are_skipped() {
        let e = entry(&["10.1.1.0/24"], 1000);
        assert_eq!(Entry::decode(e.encode().as_bytes()), Ok(e.clone()));
        assert!(e.encode().starts_with("{\"v\":1,"));
        let other = e.encode().replace("\"v\":1", "\"v\":2");
        assert_eq!(Entry::decode(other.as_bytes()), Err(Skip::OtherVersion));
        for bad in [
            &b"not json"[..],
            b"{\"v\":1}",
            b"[1,2]",
            b"{\"v\":1,\"kind\":\"x\",\"c\":[1],\"f\":0,\"n\":[],\"a\":[],\"s\":1,\"r\":[],\"t\":1}",
        ] {
            assert_eq!(Entry::decode(bad), Err(Skip::Malformed), "{bad:?}");
        }
        let mut big = e.clone();
        big.n = (0..17).map(|i| format!("10.0.{i}.0/24")).collect();
        assert_eq!(Entry::decode(big.encode().as_bytes()), Err(Skip::Malformed));
        let mut score = e;
        score.s = 101;
        assert_eq!(
            Entry::decode(score.encode().as_bytes()),
            Err(Skip::Malformed)
        );
    }

    #[test]
    fn view_leaves_out_this_node_stale_and_bad_entries() {
        let a = entry(&["10.1.1.0/24"], 1000).encode();
        let b = entry(&["10.2.2.0/24"], 990).encode();
        let stale = entry(&["10.3.3.0/24"], 500).encode();
        let other = a.replace("\"v\":1", "\"v\":7");
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b"me", a.as_bytes()),
            (b"b", b.as_bytes()),
            (b"c", stale.as_bytes()),
            (b"d", b"{garbage"),
            (b"e", other.as_bytes()),
        ];
        let mut skipped = Skipped::default();
        let view = FleetView::from_fields("me", fields, 1000, 300, &mut skipped);
        assert_eq!(view.remote.len(), 1);
        assert_eq!(view.remote[0].0, "b");
        assert_eq!(
            skipped,
            Skipped {
                malformed: 1,
                other_version: 1
            }
        );
    }

    #[test]
    fn facts_union_networks_and_count_nodes_within_the_window() {
        let view = FleetView {
            remote: vec![
                ("b".into(), entry(&["10.2.2.0/24", "10.1.1.0/24"], 1000)),
                ("c".into(), entry(&["10.9.9.0/24"], 600)),
            ],
        };
        let local = vec!["10.1.1.0/24".to_string()];
        let f = view.facts(&local, true, 1000, 300);
        assert_eq!(
            f,
            FleetFacts {
                nodes: 2,
                networks: 2
            }
        );
        // Later, b's entry leaves the window too.
        let f = view.facts(&local, true, 1400, 300);
        assert_eq!(
            f,
            FleetFacts {
                nodes: 1,
                networks: 1
            }
        );
        // Within c's window: three nodes and three networks.
        let f = view.facts(&local, true, 890, 300);
        assert_eq!(
            f,
            FleetFacts {
                nodes: 3,
                networks: 3
            }
        );
        // This node idle: it does not count as a node.
        assert_eq!(view.facts(&[], false, 1000, 300).nodes, 1);
    }

    #[test]
    fn merged_view_caps_unions() {
        let many: Vec<String> = (0..16).map(|i| format!("10.0.{i}.0/24")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let entries: Vec<(String, Entry)> = (0..10)
            .map(|i| {
                let mut e = entry(&many, 100 + i);
                e.n = e.n.iter().map(|n| format!("{i}-{n}")).collect();
                e.s = 90 - i as u8;
                (format!("node{i}"), e)
            })
            .collect();
        let m = Merged::of(entries.iter().map(|(n, e)| (n.as_str(), e))).unwrap();
        assert_eq!(m.networks.len(), MAX_MERGED);
        assert_eq!(m.nodes.len(), 10);
        assert_eq!(m.score, 81);
        assert_eq!(m.requests, 60);
        assert_eq!(m.last_seen, 109);
        assert!(Merged::of(std::iter::empty()).is_none());
    }
}
