//! The floor of the design: what the traced workload pays for the traps alone, with
//! nothing done in them. bpftrace puts programs with empty actions (`{}`) on exactly the
//! hooks the agent attaches; the list comes from the agent itself (`observer bench
//! hooks`: its raw syscall tracepoints, its tracepoint table, and the TLS entry points it
//! finds in the system libssl, each with a uprobe and a uretprobe), so the two cannot
//! drift apart. bpftrace 0.17 cannot attach raw tracepoints: the agent's binary puts its
//! own empty programs on those (`observer bench empty-syscall-hooks`). The gap between
//! this column and "without" is the price of the hooks; the gap between this column and
//! the agent's is what the agent's programs and its user-space side add.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// The agent's hooks in bpftrace's probe syntax (`tracepoint:syscalls:sys_enter_read`,
/// `uretprobe:/usr/lib/x86_64-linux-gnu/libssl.so.3:SSL_read`).
pub fn agent_hooks(bin: &Path) -> Result<Vec<String>> {
    let out = Command::new(bin)
        .args(["bench", "hooks"])
        .output()
        .with_context(|| format!("running {} bench hooks", bin.display()))?;
    if !out.status.success() {
        bail!(
            "observer bench hooks failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let hooks = parse_hooks(&String::from_utf8_lossy(&out.stdout));
    if hooks.is_empty() {
        bail!("observer bench hooks listed no hooks");
    }
    Ok(hooks)
}

fn parse_hooks(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            [RAW, "tracepoint:", "uprobe:", "uretprobe:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(str::to_string)
        .collect()
}

/// The prefix of the raw tracepoints in the list (attached by the agent's binary).
const RAW: &str = "rawtracepoint:";

/// A bpftrace program with an empty action on every hook it can attach (all but the raw
/// tracepoints).
fn script(hooks: &[String]) -> String {
    hooks
        .iter()
        .filter(|h| !h.starts_with(RAW))
        .map(|h| format!("{h} {{}}\n"))
        .collect()
}

/// bpftrace running the empty probes, and the agent's binary holding empty programs on
/// the raw syscall tracepoints; stopped (probes detached) when dropped.
pub struct EmptyProbes {
    child: Child,
    raw: Option<Child>,
    dir: PathBuf,
    /// tracefs was mounted for bpftrace (a fresh machine has it unmounted): unmounted
    /// again when done.
    mounted: bool,
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// Mount tracefs when it is not (bpftrace finds tracepoints there); `true` when this
/// mounted it.
fn ensure_tracefs() -> Result<bool> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(false);
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS])
        .status()
        .context("mounting tracefs")?;
    if !status.success() {
        bail!("mounting tracefs at {TRACEFS}: {status}");
    }
    Ok(true)
}

impl EmptyProbes {
    /// Start bpftrace and wait until every hook has its program loaded.
    pub fn start(bin: &Path, hooks: &[String]) -> Result<Self> {
        let raw = if hooks.iter().any(|h| h.starts_with(RAW)) {
            Some(start_raw(bin)?)
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!("observer-floor-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("empty.bt");
        std::fs::write(&path, script(hooks))?;
        let mounted = ensure_tracefs()?;
        let before = crate::bench::progs();
        let bpftrace_hooks = hooks.iter().filter(|h| !h.starts_with(RAW)).count();
        let stderr = std::fs::File::create(dir.join("stderr"))?;
        let child = Command::new("bpftrace")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting bpftrace (apt-get install bpftrace)")?;
        let mut probes = Self {
            child,
            raw,
            dir,
            mounted,
        };
        // bpftrace loads and attaches the programs one after the other: once the last
        // is loaded, a moment more sees it attached.
        let start = Instant::now();
        loop {
            let loaded = crate::bench::progs()
                .keys()
                .filter(|id| !before.contains_key(id))
                .count();
            if loaded >= bpftrace_hooks {
                std::thread::sleep(Duration::from_millis(500));
                return Ok(probes);
            }
            if let Ok(Some(status)) = probes.child.try_wait() {
                let err = std::fs::read_to_string(probes.dir.join("stderr")).unwrap_or_default();
                bail!("bpftrace exited ({status}) before attaching its probes:\n{err}");
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!("bpftrace loaded {loaded} of {bpftrace_hooks} programs in 120 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `observer bench empty-syscall-hooks`, once it says its programs are attached.
fn start_raw(bin: &Path) -> Result<Child> {
    use std::io::BufRead as _;
    let mut child = Command::new(bin)
        .args(["bench", "empty-syscall-hooks", "--seconds", "86400"])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} bench empty-syscall-hooks", bin.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != "attached" {
        let _ = child.kill();
        let status = child.wait()?;
        bail!("observer bench empty-syscall-hooks did not attach ({status})");
    }
    Ok(child)
}

impl Drop for EmptyProbes {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; SIGINT makes bpftrace detach and exit.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        if let Some(raw) = &mut self.raw {
            let _ = raw.kill();
            let _ = raw.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.mounted {
            let _ = Command::new("umount").arg(TRACEFS).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_become_empty_probes() {
        let listed = "rawtracepoint:sys_enter\n\
                      tracepoint:syscalls:sys_enter_read\n\
                      uprobe:/usr/lib/x86_64-linux-gnu/libssl.so.3:SSL_read\n\
                      uretprobe:/usr/lib/x86_64-linux-gnu/libssl.so.3:SSL_read\n\
                      \n\
                      some log line\n";
        let hooks = parse_hooks(listed);
        assert_eq!(hooks.len(), 4);
        assert_eq!(
            script(&hooks),
            "tracepoint:syscalls:sys_enter_read {}\n\
             uprobe:/usr/lib/x86_64-linux-gnu/libssl.so.3:SSL_read {}\n\
             uretprobe:/usr/lib/x86_64-linux-gnu/libssl.so.3:SSL_read {}\n"
        );
    }
}
