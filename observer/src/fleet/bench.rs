//! `observer bench fleet`: N simulated agents, each with its own connection and node
//! name, publish M synthetic sessions each through the real publish code against a
//! store, then the fleet query is timed. Prints one line of figures.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{entry::Entry, Fleet, FleetConfig, FleetMetrics, Store};
use crate::{
    identity::Fingerprint,
    score::ScoreConfig,
    session::{Direction, FleetPublication},
};

/// Keys written by the bench expire after this many seconds.
const BENCH_TTL_SECS: u64 = 120;

/// The synthetic sessions of agent `i`: each is shared with the next agent (a client
/// spread over two nodes), so the store holds `agents × sessions / 2` session hashes of
/// two fields each.
fn publications(i: usize, agents: usize, sessions: usize, now: u64) -> Vec<FleetPublication> {
    let distinct = (agents * sessions / 2).max(1);
    (0..sessions)
        .map(|j| {
            let n = (i * sessions / 2 + j) % distinct;
            let fp = Fingerprint::parse(&format!("tok_{n:012x}")).expect("valid fingerprint");
            FleetPublication {
                id: Arc::from(fp.as_str()),
                direction: Direction::Inbound,
                fingerprint: fp,
                entry: Entry {
                    v: super::entry::ENTRY_VERSION,
                    kind: "bearer".into(),
                    c: [0, 40 + j as u64 % 7, 0, 2, 0, 0],
                    f: 1,
                    n: vec![format!("10.{}.{}.0/24", i % 256, j % 256)],
                    a: vec!["okhttp/4".into()],
                    s: if j % 50 == 0 { 40 } else { 100 },
                    r: if j % 50 == 0 {
                        vec!["fleet_networks".into()]
                    } else {
                        vec![]
                    },
                    t: now,
                },
            }
        })
        .collect()
}

fn used_memory(info: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}

pub fn run(
    endpoint: &str,
    agents: usize,
    sessions: usize,
    interval_secs: u64,
    rounds: usize,
) -> anyhow::Result<()> {
    let agents = agents.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(
        endpoint,
        agents,
        sessions,
        interval_secs,
        rounds.max(1),
    ))
}

async fn bench(
    endpoint: &str,
    agents: usize,
    sessions: usize,
    interval_secs: u64,
    rounds: usize,
) -> anyhow::Result<()> {
    let prefix = format!("observer-bench-{}", std::process::id());
    let scoring = ScoreConfig {
        interval_secs: interval_secs.max(1),
        ..Default::default()
    };
    let mut fleet = Vec::new();
    for i in 0..agents {
        let cfg = FleetConfig {
            endpoint: Some(endpoint.to_string()),
            node: Some(format!("bench-node-{i}")),
            key_prefix: prefix.clone(),
            ..Default::default()
        };
        cfg.validate()
            .map_err(|(k, why)| anyhow::anyhow!("{k}: {why}"))?;
        let registry = prometheus::Registry::new();
        let store = Store::new(&cfg, None).context("--endpoint")?;
        fleet.push(Arc::new(Fleet::with_store(
            cfg.node_name(),
            prefix.clone(),
            store,
            FleetMetrics::register(&registry)?,
            BENCH_TTL_SECS,
            scoring.clone(),
        )));
    }
    fleet[0]
        .load_scripts()
        .await
        .context("the store does not answer")?;
    let info = |f: Arc<Fleet>| async move {
        f.store
            .cmd::<String>(redis::cmd("INFO").arg("memory"))
            .await
            .ok()
            .and_then(|s| used_memory(&s))
    };
    let before = info(Arc::clone(&fleet[0])).await;
    let ops_before: Vec<u64> = fleet
        .iter()
        .map(|f| f.store.ops.load(Ordering::Relaxed))
        .collect();
    let now = super::unix_now();
    let work: Vec<Arc<Vec<FleetPublication>>> = (0..agents)
        .map(|i| Arc::new(publications(i, agents, sessions, now)))
        .collect();
    let interval = Duration::from_secs(interval_secs.max(1));
    let mut slowest = Duration::ZERO;
    for _ in 0..rounds {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (f, w) in fleet.iter().zip(&work) {
            let (f, w) = (Arc::clone(f), Arc::clone(w));
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                f.publish_round(0, &w, super::unix_now())
                    .await
                    .map(|_| t.elapsed())
            }));
        }
        for t in tasks {
            let took = t.await?.context("publishing")?;
            slowest = slowest.max(took);
        }
        if let Some(rest) = interval.checked_sub(start.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    let sent: u64 = fleet
        .iter()
        .zip(ops_before)
        .map(|(f, b)| f.store.ops.load(Ordering::Relaxed) - b)
        .sum();
    let ops_per_sec = sent as f64 / agents as f64 / (rounds as f64 * interval.as_secs_f64());
    let after = info(Arc::clone(&fleet[0])).await;
    let distinct = (agents * sessions / 2).max(1);
    let bytes = match (before, after) {
        (Some(b), Some(a)) => (a - b) / distinct as f64,
        _ => f64::NAN,
    };
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        fleet[0].list(0, 100, None).await.context("fleet query")?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = (times[9] + times[10]) / 2.0;
    let max = times[19];
    tracing::debug!(?slowest, "slowest publish round");
    println!(
        "fleet ops_per_sec_per_agent={ops_per_sec:.1} bytes_per_session={bytes:.1} \
         query_ms_median={median:.2} query_ms_max={max:.2} agents={agents} sessions={sessions}"
    );
    eprintln!(
        "(publish round of {sessions} sessions per agent, {agents} agents at once: slowest \
         {:.0} ms; {distinct} session hashes of two fields each; keys {prefix}:* expire in \
         {BENCH_TTL_SECS} s)",
        slowest.as_secs_f64() * 1000.0
    );
    Ok(())
}
