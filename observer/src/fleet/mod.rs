//! Fleet mode (`[fleet]`): sessions across every node, on a Redis-protocol store (Redis,
//! Valkey, or a Redis Cluster). Off by default: the single-host table needs no service.
//!
//! Each agent publishes, once per scoring interval, one entry per live credentialed
//! session into the session's hash `{prefix}:{epoch}:s:{<bucket>}:{direction}:{fingerprint}`
//! (one field per node, see [`entry`]) with a script that also returns the other nodes'
//! fields. The sessions of one of 256 buckets share a hash tag, so one script call
//! publishes and reads up to 128 of them: a round costs about one store operation per
//! bucket (256 for 10,000 sessions), pipelined, plus one variadic ZADD per index per
//! 5,000 sessions. The other nodes' entries are merged into
//! the session's next scoring pass (`fleet_networks`, and the network count). Index
//! sorted sets per epoch (`risk`: merged score, `seen`: last publish) give the riskiest
//! list and the cleanup; a lease (`{prefix}:leader`) elects the one agent that exports
//! the fleet-wide gauges. Freezes go to the hash `{prefix}:frozen` and the channel
//! `{prefix}:freeze`. Every key has a TTL of at most `sessions.idle_ttl_secs` except the
//! freeze hash (freezes are meant to last). Each script and each command names one key,
//! so all of it works on a Redis Cluster.
//!
//! Client crate: `redis` (redis-rs), the Rust client kept by the Redis project: async on
//! tokio, a reconnecting `ConnectionManager`, an async cluster client with its own
//! retries, Lua scripts by SHA (`Script`), and TLS by rustls (with the `ring` provider
//! the agent already uses; no OpenSSL).

pub mod bench;
pub mod entry;
pub mod metrics;
pub mod store;
pub mod sync;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::{
    score::{HealthState, ScoreConfig},
    session::{FleetPublication, FreezeMarks},
};
use entry::{FleetView, Merged, Skipped};
pub use metrics::FleetMetrics;
pub use store::{Replies, Store, StoreError};

/// Session entries per pipelined batch.
pub const BATCH: usize = 2000;
/// Buckets of session keys: the keys of a bucket share a hash tag (one cluster slot), so
/// one script call publishes every session of a bucket: a round costs about one store
/// operation per bucket, not per session, and the buckets spread over a cluster's nodes.
pub const BUCKETS: u32 = 256;
/// Most sessions in one script call.
const PER_CALL: usize = 128;

/// One session hash's fields (node, entry), as a script returns them.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The bucket of a session (the same on every node: FNV-1a of the member name).
pub fn bucket(member: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in member.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h % BUCKETS
}
/// Index members per variadic ZADD.
const INDEX_BATCH: usize = 5000;
/// Most index members trimmed per round.
const TRIM_MAX: usize = 1000;
/// Most sessions `GET /api/fleet/sessions` returns.
pub const MAX_LIST: usize = 1000;
/// Sessions `GET /api/fleet/sessions` returns by default.
pub const DEFAULT_LIST: usize = 100;

/// `[fleet]`: the store shared by every agent of a fleet.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// `redis://host:port[/db]` or `rediss://host:port[/db]` (TLS). Absent (and no
    /// `cluster`): fleet mode is off.
    pub endpoint: Option<String>,
    /// Redis Cluster seed nodes (`redis://10.0.0.1:7000`, ...); instead of `endpoint`.
    pub cluster: Vec<String>,
    /// ACL user name.
    pub username: Option<String>,
    /// File whose first line is the password (readable by its owner only).
    pub password_file: Option<PathBuf>,
    /// PEM CA certificate(s) of a `rediss://` store with a private CA.
    pub tls_ca_file: Option<PathBuf>,
    /// This node's name in the store. Default: `$NODE_NAME`, else the hostname.
    pub node: Option<String>,
    /// Prefix of every key.
    pub key_prefix: String,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            cluster: Vec::new(),
            username: None,
            password_file: None,
            tls_ca_file: None,
            node: None,
            key_prefix: "observer".into(),
        }
    }
}

fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(format!(
            "{url:?} is not a redis:// or rediss:// URL (a password goes in password_file)"
        ));
    }
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(|_| ())
        .map_err(|e| format!("{url:?}: {e}"))
}

impl FleetConfig {
    pub fn enabled(&self) -> bool {
        self.endpoint.is_some() || !self.cluster.is_empty()
    }

    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, why: String| Err((format!("fleet.{key}"), why));
        if self.endpoint.is_some() && !self.cluster.is_empty() {
            return bad(
                "cluster",
                "set either fleet.endpoint or fleet.cluster, not both".into(),
            );
        }
        if let Some(url) = &self.endpoint {
            if let Err(why) = check_url(url) {
                return bad("endpoint", why);
            }
        }
        for url in &self.cluster {
            if let Err(why) = check_url(url) {
                return bad("cluster", why);
            }
        }
        let tls = self
            .endpoint
            .iter()
            .chain(&self.cluster)
            .any(|u| u.starts_with("rediss://"));
        if self.tls_ca_file.is_some() && !tls {
            return bad(
                "tls_ca_file",
                "only used with a rediss:// endpoint or cluster".into(),
            );
        }
        let p = &self.key_prefix;
        if p.is_empty()
            || p.len() > 64
            || !p
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'{' | b'}'))
        {
            return bad(
                "key_prefix",
                format!("{p:?} must be 1..=64 printable characters without spaces or braces"),
            );
        }
        if let Some(n) = &self.node {
            if let Err(why) = check_node(n) {
                return bad("node", why);
            }
        }
        if self.username.as_ref().is_some_and(|u| u.is_empty()) {
            return bad("username", "must not be empty".into());
        }
        Ok(())
    }

    /// This node's name: `node`, else `$NODE_NAME`, else the hostname.
    pub fn node_name(&self) -> String {
        self.node
            .clone()
            .or_else(|| {
                std::env::var("NODE_NAME")
                    .ok()
                    .filter(|n| check_node(n).is_ok())
            })
            .unwrap_or_else(hostname)
    }

    /// The password from `password_file` (first line), refusing a file others can read.
    pub fn password(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let meta = std::fs::metadata(path)
            .with_context(|| format!("fleet.password_file {}", path.display()))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "fleet.password_file {}: mode {mode:04o} lets group or others read it; \
                     chmod 600 (or 400) it",
                    path.display()
                );
            }
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("fleet.password_file {}", path.display()))?;
        let line = text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_end()
            .to_string();
        if line.is_empty() {
            anyhow::bail!(
                "fleet.password_file {}: first line is empty",
                path.display()
            );
        }
        Ok(Some(line))
    }
}

fn check_node(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > entry::MAX_NODE_NAME || !n.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{n:?} must be 1..={} printable characters without spaces",
            entry::MAX_NODE_NAME
        ));
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| check_node(h).is_ok())
        .unwrap_or_else(|| "unknown-node".into())
}

/// For each session key: HSET this node's entry (`ARGV[k + 2]`), refresh the TTL
/// (`ARGV[2]`), and return the other nodes' fields; one array per key. The keys of one
/// call share a bucket, hence a hash slot (so this runs on a Redis Cluster too).
const PUBLISH_LUA: &str = r"
local out = {}
for k = 1, #KEYS do
  redis.call('HSET', KEYS[k], ARGV[1], ARGV[k + 2])
  redis.call('PEXPIRE', KEYS[k], ARGV[2])
  local all = redis.call('HGETALL', KEYS[k])
  local others = {}
  for i = 1, #all, 2 do
    if all[i] ~= ARGV[1] then
      others[#others + 1] = all[i]
      others[#others + 1] = all[i + 1]
    end
  end
  out[k] = others
end
return out
";

/// Renew the lease if this node holds it.
const RENEW_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// One session across the fleet, as `GET /api/fleet/sessions` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct FleetSession {
    pub session: String,
    pub kind: String,
    pub direction: String,
    pub score: u8,
    pub state: HealthState,
    pub reasons: Vec<String>,
    pub nodes: Vec<String>,
    pub networks: Vec<String>,
    pub families: Vec<String>,
    pub requests: u64,
    pub failures: u64,
    pub status: crate::session::view::StatusCounts,
    pub last_seen: u64,
}

/// A fleet freeze message (pub/sub) and freeze hash field values. Never a credential:
/// durable hashes and fingerprints only.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FreezeMessage {
    pub v: u32,
    pub freeze: bool,
    pub node: String,
    /// Key epoch of the fingerprints.
    pub epoch: u64,
    /// Durable hash (hex) → credential kind.
    #[serde(default)]
    pub durable: BTreeMap<String, String>,
    #[serde(default)]
    pub fingerprints: BTreeSet<String>,
}

/// The agent's link to the fleet store.
pub struct Fleet {
    pub node: String,
    prefix: String,
    pub store: Store,
    pub metrics: FleetMetrics,
    publish: Script,
    renew: Script,
    /// TTL of every key but the freeze hash, milliseconds.
    ttl_ms: u64,
    lease_ms: u64,
    scoring: ScoreConfig,
    leader: AtomicBool,
}

impl Fleet {
    /// Fleet mode from the config (`None` when off). Never connects here: an unreachable
    /// store is found (and warned about) by [`Fleet::check`].
    pub fn new(
        cfg: &FleetConfig,
        sessions: &crate::session::SessionConfig,
        scoring: &ScoreConfig,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        if !cfg.enabled() {
            return Ok(None);
        }
        // The process-wide rustls provider (ring) for a rediss:// store.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let password = cfg.password()?;
        let store = Store::new(cfg, password.as_deref()).context("[fleet] store")?;
        let metrics = FleetMetrics::register(registry)?;
        Ok(Some(Arc::new(Self::with_store(
            cfg.node_name(),
            cfg.key_prefix.clone(),
            store,
            metrics,
            sessions.idle_ttl_secs,
            scoring.clone(),
        ))))
    }

    pub fn with_store(
        node: String,
        prefix: String,
        store: Store,
        metrics: FleetMetrics,
        idle_ttl_secs: u64,
        scoring: ScoreConfig,
    ) -> Self {
        Self {
            node,
            prefix,
            store,
            metrics,
            publish: Script::new(PUBLISH_LUA),
            renew: Script::new(RENEW_LUA),
            ttl_ms: idle_ttl_secs.max(1) * 1000,
            lease_ms: 3 * scoring.interval_secs.max(1) * 1000,
            scoring,
            leader: AtomicBool::new(false),
        }
    }

    fn key(&self, epoch: u64, rest: &str) -> String {
        format!("{}:{epoch}:{rest}", self.prefix)
    }

    /// The hash of session `member` (`direction:fingerprint`), tagged with its bucket.
    fn session_key(&self, epoch: u64, member: &str) -> String {
        format!(
            "{}:{epoch}:s:{{{:03}}}:{member}",
            self.prefix,
            bucket(member)
        )
    }

    fn global(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// Connect and load the scripts now; a failure is a warning (the agent goes on
    /// alone and retries every round).
    pub async fn check(&self) {
        match self.load_scripts().await {
            Ok(()) => {
                self.metrics.ok();
                tracing::info!(node = %self.node, "fleet store reachable");
            }
            Err(e) => {
                self.metrics.failed("connect");
                tracing::warn!(
                    node = %self.node,
                    "{e}; judging locally until the fleet store answers"
                );
            }
        }
    }

    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        self.store.load_script(&self.publish).await?;
        self.store.load_script(&self.renew).await
    }

    /// Publish this node's entries and read back the other nodes' (one script call per
    /// session, pipelined per [`BATCH`], plus a variadic ZADD per index). A
    /// batch that fails ends the round: nothing is buffered. Returns the fleet views
    /// read (empty views included, to clear old ones).
    pub async fn publish_round(
        &self,
        epoch: u64,
        publications: &[FleetPublication],
        now_secs: u64,
    ) -> Result<Vec<(Arc<str>, FleetView)>, StoreError> {
        let mut out = Vec::with_capacity(publications.len());
        let mut skipped = Skipped::default();
        let risk = self.key(epoch, "risk");
        let seen = self.key(epoch, "seen");
        let window = self.scoring.window_secs;
        let mut by_risk: Vec<(u8, String)> = Vec::with_capacity(publications.len());
        // Sessions by bucket, then cut into script calls of at most PER_CALL.
        let mut by_bucket: Vec<(u32, usize, String)> = publications
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let member = format!("{}:{}", p.direction.as_str(), p.fingerprint);
                (bucket(&member), i, member)
            })
            .collect();
        by_bucket.sort_unstable_by_key(|(b, i, _)| (*b, *i));
        let mut calls: Vec<&[(u32, usize, String)]> = Vec::new();
        for group in by_bucket.chunk_by(|a, b| a.0 == b.0) {
            calls.extend(group.chunks(PER_CALL));
        }
        let mut i = 0;
        while i < calls.len() {
            // Calls per pipeline, about BATCH sessions each.
            let mut j = i;
            let mut sessions = 0;
            while j < calls.len() && (j == i || sessions + calls[j].len() <= BATCH) {
                sessions += calls[j].len();
                j += 1;
            }
            let batch = &calls[i..j];
            i = j;
            let mut pipe = redis::pipe();
            for call in batch {
                let mut invocation = self.publish.prepare_invoke();
                invocation.arg(&self.node).arg(self.ttl_ms);
                for (_, idx, member) in call.iter() {
                    invocation
                        .key(self.session_key(epoch, member))
                        .arg(publications[*idx].entry.encode());
                }
                pipe.invoke_script(&invocation);
            }
            let replies: Vec<Vec<Fields>> = match self.store.pipe(&pipe, Replies::All).await {
                Ok(v) => v,
                Err(e) if store::is_noscript(&e) => {
                    self.load_scripts().await?;
                    self.store.pipe(&pipe, Replies::All).await?
                }
                Err(e) => return Err(e),
            };
            for (call, per_key) in batch.iter().zip(replies) {
                for ((_, idx, member), fields) in call.iter().zip(per_key) {
                    let p = &publications[*idx];
                    let view = FleetView::from_fields(
                        &self.node,
                        fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
                        now_secs,
                        window,
                        &mut skipped,
                    );
                    let merged = view
                        .remote
                        .iter()
                        .map(|(_, e)| e.s)
                        .fold(p.entry.s, u8::min);
                    by_risk.push((merged, member.clone()));
                    out.push((Arc::clone(&p.id), view));
                }
            }
            self.metrics.published.inc_by(sessions as u64);
        }
        // The indexes: one variadic ZADD per index per INDEX_BATCH members.
        for chunk in by_risk.chunks(INDEX_BATCH) {
            let mut index = redis::pipe();
            let risk_items: Vec<(u8, &str)> = chunk.iter().map(|(s, m)| (*s, m.as_str())).collect();
            let seen_items: Vec<(u64, &str)> =
                chunk.iter().map(|(_, m)| (now_secs, m.as_str())).collect();
            index.zadd_multiple(&risk, &risk_items).ignore();
            index.zadd_multiple(&seen, &seen_items).ignore();
            self.store.pipe::<()>(&index, Replies::None).await?;
        }
        self.metrics
            .skipped
            .with_label_values(&["malformed"])
            .inc_by(skipped.malformed);
        self.metrics
            .skipped
            .with_label_values(&["other_version"])
            .inc_by(skipped.other_version);
        Ok(out)
    }

    /// One round of the lease: note this node, hold or take the lease, and as the
    /// holder trim the indexes and set the fleet-wide gauges.
    pub async fn lease_round(&self, epoch: u64, now_secs: u64) -> Result<bool, StoreError> {
        let nodes = self.global("nodes");
        let leader_key = self.global("leader");
        let mut p = redis::pipe();
        p.zadd(&nodes, &self.node, now_secs).ignore();
        p.pexpire(&nodes, self.ttl_ms as i64).ignore();
        self.store.pipe::<()>(&p, Replies::None).await?;
        let held = if self.leader.load(Ordering::Relaxed) {
            let mut call = self.renew.key(&leader_key);
            call.arg(&self.node).arg(self.lease_ms);
            let mut p = redis::pipe();
            p.invoke_script(&call);
            let (r,): (i64,) = match self.store.pipe(&p, Replies::All).await {
                Err(e) if store::is_noscript(&e) => {
                    self.load_scripts().await?;
                    self.store.pipe(&p, Replies::All).await?
                }
                r => r?,
            };
            r == 1
        } else {
            let mut set = redis::cmd("SET");
            set.arg(&leader_key)
                .arg(&self.node)
                .arg("NX")
                .arg("PX")
                .arg(self.lease_ms);
            let r: Option<String> = self.store.cmd(&set).await?;
            r.is_some()
        };
        self.leader.store(held, Ordering::Relaxed);
        if !held {
            self.metrics.follow();
            return Ok(false);
        }
        let risk = self.key(epoch, "risk");
        let seen = self.key(epoch, "seen");
        let cutoff = now_secs.saturating_sub(self.ttl_ms / 1000);
        let stale: Vec<String> = self
            .store
            .cmd(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&seen)
                    .arg("-inf")
                    .arg(format!("({cutoff}"))
                    .arg("LIMIT")
                    .arg(0)
                    .arg(TRIM_MAX),
            )
            .await?;
        let mut p = redis::pipe();
        if !stale.is_empty() {
            p.zrem(&risk, &stale).ignore();
            p.zrem(&seen, &stale).ignore();
        }
        p.cmd("ZREMRANGEBYSCORE")
            .arg(&nodes)
            .arg("-inf")
            .arg(format!("({cutoff}"))
            .ignore();
        p.pexpire(&risk, self.ttl_ms as i64).ignore();
        p.pexpire(&seen, self.ttl_ms as i64).ignore();
        let (h, s) = (self.scoring.healthy_min, self.scoring.suspicious_min);
        p.zcount(&risk, h, "+inf");
        p.zcount(&risk, s, format!("({h}"));
        p.zcount(&risk, "-inf", format!("({s}"));
        // The four counts are the only replies kept.
        p.zcount(&nodes, cutoff, "+inf");
        let (healthy, suspicious, unhealthy, live_nodes): (i64, i64, i64, i64) =
            self.store.pipe(&p, Replies::Last(4)).await?;
        self.metrics.lead(
            [
                (HealthState::Healthy, healthy),
                (HealthState::Suspicious, suspicious),
                (HealthState::Unhealthy, unhealthy),
            ],
            live_nodes,
        );
        Ok(true)
    }

    /// The riskiest sessions of the fleet (lowest merged score first).
    pub async fn list(
        &self,
        epoch: u64,
        limit: usize,
        state: Option<HealthState>,
    ) -> Result<Vec<FleetSession>, StoreError> {
        let limit = limit.clamp(1, MAX_LIST);
        let risk = self.key(epoch, "risk");
        // Some members' hashes may have expired since: ask for more than needed.
        let want = (limit * 2).min(2 * MAX_LIST);
        let (h, s) = (self.scoring.healthy_min, self.scoring.suspicious_min);
        let (min, max) = match state {
            None => ("-inf".to_string(), "+inf".to_string()),
            Some(HealthState::Healthy) => (h.to_string(), "+inf".into()),
            Some(HealthState::Suspicious) => (s.to_string(), format!("({h}")),
            Some(HealthState::Unhealthy) => ("-inf".into(), format!("({s}")),
        };
        let members: Vec<String> = self
            .store
            .cmd(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&risk)
                    .arg(&min)
                    .arg(&max)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(want),
            )
            .await?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for m in &members {
            p.hgetall(self.session_key(epoch, m));
        }
        let hashes: Vec<Vec<(String, Vec<u8>)>> = self.store.pipe(&p, Replies::All).await?;
        let mut skipped = Skipped::default();
        let mut out = Vec::new();
        for (member, fields) in members.iter().zip(hashes) {
            let Some((direction, fingerprint)) = member.split_once(':') else {
                continue;
            };
            let entries: Vec<(String, entry::Entry)> = fields
                .into_iter()
                .filter_map(|(node, v)| match entry::Entry::decode(&v) {
                    Ok(e) => Some((node, e)),
                    Err(s) => {
                        skipped.add(s);
                        None
                    }
                })
                .collect();
            let Some(m) = Merged::of(entries.iter().map(|(n, e)| (n.as_str(), e))) else {
                continue;
            };
            let state_now = self.scoring.state_of(m.score);
            if state.is_some_and(|s| s != state_now) {
                continue;
            }
            out.push(FleetSession {
                session: fingerprint.to_string(),
                kind: m.kind,
                direction: direction.to_string(),
                score: m.score,
                state: state_now,
                reasons: m.reasons,
                nodes: m.nodes,
                networks: m.networks,
                families: m.families,
                requests: m.requests,
                failures: m.failures,
                status: m.status.into(),
                last_seen: m.last_seen,
            });
        }
        out.sort_by(|a, b| {
            a.score
                .cmp(&b.score)
                .then(b.last_seen.cmp(&a.last_seen))
                .then_with(|| a.session.cmp(&b.session))
        });
        out.truncate(limit);
        Ok(out)
    }

    /// Share a freeze (or unfreeze) made on this node: into the freeze hash, then on
    /// the channel.
    pub async fn share_freeze(
        &self,
        freeze: bool,
        epoch: u64,
        marks: &FreezeMarks,
    ) -> Result<(), StoreError> {
        if marks.durable.is_empty() && marks.fingerprints.is_empty() {
            return Ok(());
        }
        let frozen = self.global("frozen");
        let msg = FreezeMessage {
            v: 1,
            freeze,
            node: self.node.clone(),
            epoch,
            durable: marks.durable.clone(),
            fingerprints: marks.fingerprints.clone(),
        };
        let fields = self.freeze_fields(epoch, marks);
        let mut p = redis::pipe();
        if freeze {
            p.hset_multiple(&frozen, &fields).ignore();
        } else {
            let names: Vec<&String> = fields.iter().map(|(k, _)| k).collect();
            p.hdel(&frozen, names).ignore();
        }
        p.publish(
            self.global("freeze"),
            serde_json::to_string(&msg).unwrap_or_default(),
        )
        .ignore();
        self.store.pipe::<()>(&p, Replies::None).await
    }

    /// The freeze hash's fields for `marks`: `d:<durable hash>` and
    /// `f:<epoch>:<fingerprint>`, each with its kind, node and time.
    fn freeze_fields(&self, epoch: u64, marks: &FreezeMarks) -> Vec<(String, String)> {
        let at = unix_now();
        let durable = marks.durable.iter().map(|(h, kind)| {
            (
                format!("d:{h}"),
                serde_json::json!({"v": 1, "kind": kind, "node": self.node, "at": at}).to_string(),
            )
        });
        let fingerprints = marks.fingerprints.iter().map(|f| {
            (
                format!("f:{epoch}:{f}"),
                serde_json::json!({"v": 1, "node": self.node, "at": at}).to_string(),
            )
        });
        durable.chain(fingerprints).collect()
    }

    /// Write this node's freezes back into the freeze hash where they are missing (a
    /// store that restarted empty), without announcing them: the other nodes hold them
    /// already, or load them when they next subscribe. Returns how many were missing.
    pub async fn restore_freezes(
        &self,
        epoch: u64,
        marks: &FreezeMarks,
    ) -> Result<usize, StoreError> {
        let fields = self.freeze_fields(epoch, marks);
        if fields.is_empty() {
            return Ok(0);
        }
        let frozen = self.global("frozen");
        let mut p = redis::pipe();
        for (field, value) in &fields {
            p.hset_nx(&frozen, field, value);
        }
        let added: Vec<bool> = self.store.pipe(&p, Replies::All).await?;
        Ok(added.into_iter().filter(|a| *a).count())
    }

    /// The fleet's freezes in the store, for this epoch's fingerprints (and every
    /// durable hash).
    pub async fn load_freezes(&self, epoch: u64) -> Result<FreezeMessage, StoreError> {
        let all: Vec<(String, String)> = self
            .store
            .cmd(redis::cmd("HGETALL").arg(self.global("frozen")))
            .await?;
        let mut msg = FreezeMessage {
            v: 1,
            freeze: true,
            node: String::new(),
            epoch,
            durable: BTreeMap::new(),
            fingerprints: BTreeSet::new(),
        };
        let this_epoch = format!("f:{epoch}:");
        for (field, value) in all {
            if let Some(h) = field.strip_prefix("d:") {
                let kind = serde_json::from_str::<serde_json::Value>(&value)
                    .ok()
                    .and_then(|v| v["kind"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "unknown".into());
                msg.durable.insert(h.to_string(), kind);
            } else if let Some(f) = field.strip_prefix(&this_epoch) {
                msg.fingerprints.insert(f.to_string());
            }
        }
        Ok(msg)
    }

    /// Note a failure of `op` and say so at debug level (the metrics tell the rest).
    pub fn failed(&self, op: &str, e: &StoreError) {
        self.metrics.failed(op);
        tracing::debug!(op, "{e}");
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }
}

/// What the fleet store holds, for `/privacy`.
pub fn privacy(cfg: &FleetConfig, idle_ttl_secs: u64) -> serde_json::Value {
    if !cfg.enabled() {
        return serde_json::json!({ "enabled": false });
    }
    serde_json::json!({
        "enabled": true,
        "node": cfg.node_name(),
        "holds": "per live credentialed session and node: the fingerprint (never the \
                  credential), credential kind, counts by status class, 401/403 count, \
                  up to 16 client networks as truncated here, up to 8 user-agent \
                  families, score and reasons, last-seen time; indexes of fingerprints \
                  by score and by publish time; node names; frozen durable hashes and \
                  fingerprints",
        "ttl_secs": idle_ttl_secs,
        "frozen": "kept until unfrozen (no TTL)",
    })
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Decode a freeze message from the channel; `None` when malformed.
pub fn decode_freeze(payload: &[u8]) -> Option<FreezeMessage> {
    if payload.len() > 1 << 20 {
        return None;
    }
    serde_json::from_slice::<FreezeMessage>(payload)
        .ok()
        .filter(|m| m.v == 1 && !m.node.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every node puts a session in the same bucket (a fixed hash, not a seeded one), and
    /// sessions spread over the buckets.
    #[test]
    fn buckets_are_fixed_and_spread() {
        assert_eq!(
            bucket("inbound:tok_5f2c9a1e0b7d"),
            bucket("inbound:tok_5f2c9a1e0b7d")
        );
        // FNV-1a 32 of "a" is 0xe40c292c.
        assert_eq!(bucket("a"), 0xe40c_292c % BUCKETS);
        let used: std::collections::HashSet<u32> = (0..2000)
            .map(|i| bucket(&format!("inbound:tok_{i:012x}")))
            .collect();
        assert!(used.len() > BUCKETS as usize * 9 / 10, "{}", used.len());
    }

    fn err(toml: &str) -> String {
        let cfg: FleetConfig = toml::from_str(toml).unwrap();
        cfg.validate().unwrap_err().0
    }

    #[test]
    fn config_errors_name_their_key() {
        assert!(FleetConfig::default().validate().is_ok());
        assert!(!FleetConfig::default().enabled());
        assert_eq!(err("endpoint = \"http://x:6379\""), "fleet.endpoint");
        assert_eq!(
            err("endpoint = \"redis://a:6379\"\ncluster = [\"redis://b:7000\"]"),
            "fleet.cluster"
        );
        assert_eq!(err("cluster = [\"tcp://b:7000\"]"), "fleet.cluster");
        assert_eq!(
            err("endpoint = \"redis://a:6379\"\ntls_ca_file = \"/ca.pem\""),
            "fleet.tls_ca_file"
        );
        assert_eq!(err("key_prefix = \"\""), "fleet.key_prefix");
        assert_eq!(err("key_prefix = \"a{b}\""), "fleet.key_prefix");
        assert_eq!(err("node = \"has space\""), "fleet.node");
        assert_eq!(err("username = \"\""), "fleet.username");
        let ok: FleetConfig = toml::from_str(
            "endpoint = \"rediss://a:6380/2\"\ntls_ca_file = \"/ca.pem\"\nnode = \"n1\"",
        )
        .unwrap();
        assert!(ok.validate().is_ok());
        assert!(ok.enabled());
        assert_eq!(ok.node_name(), "n1");
        assert!(toml::from_str::<FleetConfig>("endpont = \"redis://a\"").is_err());
    }

    #[test]
    fn password_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("observer-fleet-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret-pw\nignored\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = FleetConfig {
            password_file: Some(file.clone()),
            ..Default::default()
        };
        let e = cfg.password().unwrap_err().to_string();
        assert!(
            e.contains("fleet.password_file") && !e.contains("s3cret"),
            "{e}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(cfg.password().unwrap().as_deref(), Some("s3cret-pw"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn freeze_messages_decode_or_are_dropped() {
        let m = FreezeMessage {
            v: 1,
            freeze: true,
            node: "a".into(),
            epoch: 3,
            durable: [("ab".repeat(32), "bearer".into())].into(),
            fingerprints: ["tok_0123456789ab".to_string()].into(),
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(decode_freeze(text.as_bytes()), Some(m));
        assert_eq!(decode_freeze(b"nonsense"), None);
        assert_eq!(
            decode_freeze(br#"{"v":2,"freeze":true,"node":"a","epoch":1}"#),
            None
        );
    }
}
