//! The live part of `cargo xtask bench sessions`: a running agent's memory after nginx
//! served N distinct bearer tokens under wrk (a Lua script makes every request carry the
//! next synthetic token), read from `/proc/<pid>/status` (resident set, and its split into
//! anonymous memory, file mappings and shared memory) and `/proc/<pid>/smaps` (the
//! largest mappings, to tell what dominates). Both ends are on this host, so each token
//! makes an inbound session (nginx) and an outbound one (wrk).

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context as _, Result};

use crate::bench::{metric_by_label, wrk, Agent, Nginx, CASES};

/// The issue's goal for the agent's memory at 10k sessions.
const GOAL_MIB: f64 = 64.0;
/// Connections wrk keeps open.
const CONNECTIONS: u32 = 32;
/// Seconds per wrk run; runs repeat until every token was sent.
const SECONDS: u64 = 3;

/// Requests with the next synthetic token each (from `args[1]`, cycling through
/// `args[2]` tokens). The tokens are made up and never printed.
const SCRIPT: &str = r#"
local next_token, tokens = 0, 10000
function init(args)
  next_token = tonumber(args[1]) or 0
  tokens = tonumber(args[2]) or 10000
end
function request()
  local t = next_token % tokens
  next_token = next_token + 1
  return wrk.format(nil, nil, { ["Authorization"] = string.format("Bearer synthetic-%08d-Kq7vXz2Lm9RwP4", t) })
end
"#;

/// `Name:   1234 kB` fields of `/proc/<pid>/status`, bytes.
fn status_fields(status: &str) -> BTreeMap<String, u64> {
    status
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let kib: u64 = rest.trim().strip_suffix(" kB")?.trim().parse().ok()?;
            Some((name.to_string(), kib * 1024))
        })
        .collect()
}

/// Resident bytes per mapping name in `/proc/<pid>/smaps` (anonymous mappings as
/// `[anon]`), largest first.
fn smaps_by_mapping(smaps: &str) -> Vec<(String, u64)> {
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    let mut current = String::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            // `start-end perms offset dev inode [name]`
            current = fields.nth(4).unwrap_or("[anon]").to_string();
        } else if first == "Rss:" {
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            *by.entry(current.clone()).or_default() += kib * 1024;
        }
    }
    let mut v: Vec<_> = by.into_iter().filter(|(_, b)| *b > 0).collect();
    v.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
    v
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn memory_line(fields: &BTreeMap<String, u64>) -> String {
    let f = |k: &str| mib(fields.get(k).copied().unwrap_or(0));
    format!(
        "VmRSS {:.1} MiB = RssAnon {:.1} + RssFile {:.1} + RssShmem {:.1} MiB (peak VmHWM {:.1} MiB)",
        f("VmRSS"),
        f("RssAnon"),
        f("RssFile"),
        f("RssShmem"),
        f("VmHWM")
    )
}

pub fn live(bin: &Path, tokens: usize) -> Result<()> {
    let case = CASES
        .iter()
        .find(|c| c.name == "plaintext")
        .context("plaintext case")?;
    let _nginx = Nginx::start(&[case])?;
    // What the TLS scan (which reads every running program) leaves behind, apart.
    let dir = std::env::temp_dir().join(format!("observer-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tls_off = dir.join("tls-off.toml");
    std::fs::write(&tls_off, "[tls]\nenabled = false\n")?;
    let idle_no_tls = {
        let agent = Agent::start(bin, &["--config", &tls_off.display().to_string()])?;
        std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))
            .map(|s| status_fields(&s))
            .unwrap_or_default()
    };
    // The goal is about the API's sessions: the load generator is not the API, so its
    // (outbound) side is left out with the privacy off switch, as a deployment would.
    let api_only = dir.join("api-only.toml");
    std::fs::write(&api_only, "[privacy]\nignore_processes = [\"wrk\"]\n")?;
    let agent = Agent::start(bin, &["--config", &api_only.display().to_string()])?;
    let status = || {
        std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))
            .map(|s| status_fields(&s))
            .unwrap_or_default()
    };
    let idle = status();
    let script = dir.join("tokens.lua");
    std::fs::write(&script, SCRIPT)?;
    let mut sent = 0u64;
    for _ in 0..20 {
        if sent >= tokens as u64 {
            break;
        }
        let args = [sent.to_string(), tokens.to_string()];
        sent += wrk(
            &case.url(),
            SECONDS,
            CONNECTIONS,
            Some((script.as_path(), &args)),
        )?
        .requests;
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Let the agent drain, score and publish a snapshot (every `scoring.interval_secs`,
    // 5 s by default), as it would hold them in steady state.
    std::thread::sleep(Duration::from_secs(7));
    let metrics = agent.metrics();
    let after = status();
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", agent.pid())).unwrap_or_default();
    let sessions = metric_by_label(&metrics, "api_observer_sessions", "direction");
    let live: u64 = sessions.values().sum();
    let evicted = crate::bench::metric_sum(&metrics, "api_observer_session_evictions_total");
    drop(agent);
    println!(
        "live agent (nginx under wrk, {CONNECTIONS} connections, {} requests, {} distinct synthetic bearer tokens):",
        sent,
        sent.min(tokens as u64)
    );
    println!(
        "  sessions: {live} ({}); evicted (idle or table full): {evicted}",
        sessions
            .iter()
            .map(|(d, n)| format!("{d} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  idle after start, TLS scan off: {}",
        memory_line(&idle_no_tls)
    );
    println!(
        "  idle after start (default, wrk ignored): {}",
        memory_line(&idle)
    );
    let rss = mib(after.get("VmRSS").copied().unwrap_or(0));
    println!(
        "  after the load (default, wrk ignored):   {}   (goal <= {GOAL_MIB:.0} MiB at 10k sessions: {})",
        memory_line(&after),
        if rss <= GOAL_MIB { "met" } else { "NOT met" }
    );
    println!("  largest resident mappings:");
    for (name, bytes) in smaps_by_mapping(&smaps).into_iter().take(6) {
        let note = if name.starts_with("anon_inode:bpf-map") {
            "  (the kernel's maps, mostly the ring buffer: its data pages are mapped twice, \
             for reads across the wrap, and counted twice)"
        } else {
            ""
        };
        println!("    {:>7.1} MiB  {name}{note}", mib(bytes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_in_bytes() {
        let s = "Name:\tobserver\nVmHWM:\t   60000 kB\nVmRSS:\t   51200 kB\nRssAnon:\t   20480 kB\nThreads:\t3\n";
        let f = status_fields(s);
        assert_eq!(f["VmRSS"], 51200 * 1024);
        assert_eq!(f["RssAnon"], 20480 * 1024);
        assert!(!f.contains_key("Threads"));
        assert!(memory_line(&f).starts_with("VmRSS 50.0 MiB = RssAnon 20.0 + RssFile 0.0"));
    }

    #[test]
    fn smaps_grouped_by_mapping() {
        let smaps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234 /usr/bin/observer
Size:               1024 kB
Rss:                 800 kB
55d0c1000000-55d0c2000000 rw-p 00000000 00:00 0 [heap]
Rss:                4096 kB
7f0000000000-7f0001000000 r--s 00000000 00:0f 99 anon_inode:bpf-map
Rss:               16384 kB
7f0002000000-7f0002100000 rw-p 00000000 00:00 0
Rss:                 100 kB
7f0003000000-7f0003100000 rw-p 00000000 00:00 0
Rss:                  28 kB
VmFlags: rd wr mr mw me ac
";
        assert_eq!(
            smaps_by_mapping(smaps),
            [
                ("anon_inode:bpf-map".to_string(), 16384 * 1024),
                ("[heap]".to_string(), 4096 * 1024),
                ("/usr/bin/observer".to_string(), 800 * 1024),
                ("[anon]".to_string(), 128 * 1024),
            ]
        );
    }
}
