//! The downstream peers of the downstream-call tests: a local DNS server (dnsmasq), a
//! throwaway PostgreSQL cluster, a throwaway MariaDB server, and the API server `tests/servers/downstream_api.py`
//! run in a private mount namespace whose `/etc/resolv.conf` names that DNS server (so
//! glibc's resolver really asks it). Redis is [`crate::redis::Redis`]. Each is stopped
//! and its files removed when dropped.

use std::{
    fs::File,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{free_port, scratch_dir, skip, wait_for, wait_listening, workspace_root, Proc};

/// The Python modules `downstream_api.py` imports.
pub const PYTHON_MODULES: &[&str] = &["psycopg2", "psycopg", "redis"];

/// The PostgreSQL role the API server logs in as (trust, from 127.0.0.1).
pub const PG_APP_ROLE: &str = "app";
/// A role that logs in with a password (SCRAM), for the authentication-failure case.
pub const PG_PASSWORD_ROLE: &str = "reporter";
pub const PG_PASSWORD: &str = "reporter-pw-7193";

/// The Python module `downstream_api.py` imports for its MySQL route (only then).
pub const MYSQL_PYTHON_MODULE: &str = "pymysql";
/// The MariaDB user the API server logs in as (mysql_native_password, from 127.0.0.1).
pub const MYSQL_APP_USER: &str = "app";
pub const MYSQL_APP_PASSWORD: &str = "app-mysql-pw-5120";

/// Whether a program is on PATH, or (for `dnsmasq`, which Debian puts in /usr/sbin) in
/// /usr/sbin or /sbin.
fn find_program(name: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !found.is_empty() {
        return Some(PathBuf::from(found));
    }
    ["/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// The directory of the newest installed PostgreSQL server's programs (`initdb`,
/// `pg_ctl`, `psql`): Debian's `/usr/lib/postgresql/<version>/bin`, else the one on PATH.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    find_program("initdb").and_then(|p| p.parent().map(Path::to_path_buf))
}

/// A `python3` that imports `modules`: the one on PATH, else the system's
/// `/usr/bin/python3` (where Debian's `python3-*` packages are, when PATH leads to
/// another Python, e.g. pyenv's).
pub fn python_with(modules: &[&str]) -> Option<PathBuf> {
    let imports = modules.join(", ");
    ["python3", "/usr/bin/python3"]
        .iter()
        .find(|py| {
            Command::new(py)
                .args(["-c", &format!("import {imports}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(PathBuf::from)
}

/// Whether everything the downstream tests need is here (dnsmasq, a PostgreSQL server,
/// redis-server, unshare, curl, the Python modules); when not, the test is recorded as
/// skipped. Call after [`crate::prerequisites`].
#[must_use]
pub fn downstream_prerequisites() -> bool {
    let mut missing: Vec<String> = Vec::new();
    if find_program("dnsmasq").is_none() {
        missing.push("dnsmasq".into());
    }
    if postgres_bin_dir().is_none() {
        missing.push("PostgreSQL server (initdb, pg_ctl)".into());
    }
    for tool in [
        "redis-server",
        "redis-cli",
        "unshare",
        "mount",
        "runuser",
        "curl",
    ] {
        if find_program(tool).is_none() {
            missing.push(tool.into());
        }
    }
    if python_with(PYTHON_MODULES).is_none() {
        missing.push(format!("python modules {}", PYTHON_MODULES.join(", ")));
    }
    if missing.is_empty() {
        return true;
    }
    skip(&format!("prerequisites missing: {}", missing.join(", ")));
    false
}

// ---------------------------------------------------------------------------------
// DNS

/// A DNS query message for `name` (one question, class IN, recursion desired).
pub fn dns_query_message(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

/// Ask `server` (UDP) for the A record of `name`; returns (rcode, answer count).
pub fn dns_query(server: SocketAddr, name: &str) -> Result<(u8, u16)> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let id = (std::process::id() & 0xffff) as u16;
    s.send_to(&dns_query_message(id, name, 1), server)?;
    let mut buf = [0u8; 1500];
    loop {
        let (n, _) = s.recv_from(&mut buf)?;
        if n >= 12 && buf[..2] == id.to_be_bytes() {
            return Ok((buf[3] & 0x0f, u16::from_be_bytes([buf[6], buf[7]])));
        }
    }
}

/// dnsmasq answering on `<addr>:53` (UDP and TCP) from `records` only: no upstream, no
/// /etc/hosts; an unknown name under a record's domain is NXDOMAIN (an unknown name
/// elsewhere is REFUSED); a name with only an IPv4 record answers AAAA with no data.
pub struct Dnsmasq {
    child: Child,
    pub addr: String,
    dir: PathBuf,
}

impl Dnsmasq {
    pub fn start(addr: &str, records: &[(&str, &str)]) -> Result<Self> {
        let bin = find_program("dnsmasq").context("dnsmasq is not installed")?;
        stop_leftovers("dnsmasq", "dnsmasq");
        let dir = scratch_dir("dnsmasq");
        let server: SocketAddr = format!("{addr}:53").parse()?;
        // A dnsmasq an earlier, killed run left on this address would answer in our
        // place (with its records): refuse to go on.
        if dns_query(server, "probe.observer.invalid").is_ok() {
            bail!("something already answers DNS on {server}");
        }
        let mut cmd = Command::new(bin);
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--port=53",
            "--user=root",
            "--pid-file=",
            "--cache-size=0",
            "--log-queries",
        ])
        .arg(format!("--listen-address={addr}"))
        .arg(format!(
            "--log-facility={}",
            dir.join("dnsmasq.log").display()
        ))
        // --conf-file with nothing: no /etc/dnsmasq.conf, no /etc/dnsmasq.d.
        .arg("--conf-file=/dev/null");
        let mut zones: Vec<&str> = Vec::new();
        for (name, ip) in records {
            cmd.arg(format!("--host-record={name},{ip}"));
            if let Some((_, zone)) = name.split_once('.') {
                zones.push(zone);
            }
        }
        zones.sort_unstable();
        zones.dedup();
        for zone in zones {
            cmd.arg(format!("--local=/{zone}/"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("stdout"))?)
            .stderr(File::create(dir.join("stderr"))?)
            .spawn()
            .context("starting dnsmasq")?;
        std::fs::write(dir.join("pid"), child.id().to_string())?;
        let mut me = Self {
            child,
            addr: addr.to_string(),
            dir,
        };
        let probe = records.first().map_or("probe.observer.test", |r| r.0);
        let ready = wait_for(Duration::from_secs(10), || {
            if let Ok(Some(_)) = me.child.try_wait() {
                return Some(false);
            }
            dns_query(server, probe).ok().map(|_| true)
        });
        if ready != Some(true) {
            bail!("dnsmasq on {server} did not answer; {}", me.log());
        }
        Ok(me)
    }

    pub fn server(&self) -> SocketAddr {
        format!("{}:53", self.addr).parse().expect("an IP address")
    }

    /// dnsmasq's stderr and query log.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("stderr:\n{}\nlog:\n{}", read("stderr"), read("dnsmasq.log"))
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------
// PostgreSQL

/// A throwaway PostgreSQL cluster (run as the `postgres` user) on a free loopback port:
/// database `shop` with `items(id, name)` (ids 1..=20 and 4242, named
/// `canary-secret-42`) readable by role `app` (trust from 127.0.0.1), and
/// `secrets(id, v)` that `app` may not read (SQLSTATE 42501); role `reporter` logs in
/// with [`PG_PASSWORD`] (SCRAM). Every statement is logged to its log file.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
}

const PG_SETUP: &str = "
CREATE ROLE app LOGIN;
CREATE ROLE reporter LOGIN PASSWORD '@PASSWORD@';
CREATE DATABASE shop OWNER postgres;
\\connect shop
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO items SELECT i, 'item-' || i FROM generate_series(1, 20) AS i;
INSERT INTO items VALUES (4242, 'canary-secret-42');
CREATE TABLE secrets (id int, v text);
INSERT INTO secrets VALUES (1, 'canary-secret-row');
REVOKE ALL ON secrets FROM PUBLIC;
GRANT SELECT ON items TO app;
GRANT CONNECT ON DATABASE shop TO reporter;
";

const PG_HBA: &str = "\
local all all trust
host all app 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
";

fn run_checked(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command run as the `postgres` user (initdb and the server refuse root).
fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c.stdin(Stdio::null());
    c
}

/// Scratch directories (`observer-e2e-<pid>-<n>-<kind>`) of earlier test runs that were
/// killed (the pid is gone), so never reached their `Drop`.
fn leftover_scratch_dirs(kind: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("observer-e2e-") else {
                return false;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            name.ends_with(&format!("-{kind}"))
                && pid.is_some_and(|pid| {
                    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
                })
        })
        .map(|e| e.path())
        .collect()
}

/// Stop the clusters earlier, killed test runs left running, and remove their files.
fn stop_leftover_clusters(bin: &Path) {
    for dir in leftover_scratch_dirs("postgres") {
        let data = dir.join("data");
        if data.join("postmaster.pid").exists() {
            let _ = as_postgres(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Kill the `comm` processes (dnsmasq, the API server) earlier, killed test runs left
/// running (their pid is in their `kind` scratch directory), and remove their files.
fn stop_leftovers(kind: &str, comm: &str) {
    for dir in leftover_scratch_dirs(kind) {
        let pid = std::fs::read_to_string(dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let running = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if running.trim().starts_with(comm) {
                // SAFETY: kill(2); the pid is a process a test of ours started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Postgres {
    pub fn start() -> Result<Self> {
        let bin = postgres_bin_dir().context("no PostgreSQL server installed")?;
        stop_leftover_clusters(&bin);
        let dir = scratch_dir("postgres");
        // The postgres user must reach its files: the scratch dir is its own.
        run_checked(
            "chown",
            Command::new("chown").arg("postgres:postgres").arg(&dir),
        )?;
        let data = dir.join("data");
        run_checked(
            "initdb",
            as_postgres(&bin.join("initdb")).arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ]),
        )?;
        std::fs::write(data.join("pg_hba.conf"), PG_HBA)?;
        let port = free_port();
        let me = Self { port, bin, dir };
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=off -c fsync=off \
             -c log_connections=on -c log_statement=all -c shared_buffers=16MB",
            me.dir.display()
        );
        run_checked(
            "pg_ctl start",
            as_postgres(&me.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(me.log_file())
                .args(["-w", "-t", "30", "-o", &options, "start"])
                // pg_ctl's server keeps its stdout: do not make `output()` wait for it.
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .with_context(|| format!("log:\n{}", me.log()))?;
        me.psql("postgres", &PG_SETUP.replace("@PASSWORD@", PG_PASSWORD))
            .with_context(|| format!("setting up the cluster; log:\n{}", me.log()))?;
        wait_listening(format!("127.0.0.1:{port}").parse()?)?;
        Ok(me)
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The server's log (every connection and statement).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// Run `sql` with psql as the superuser over the Unix socket; returns psql's output
    /// (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let script = self.dir.join("script.sql");
        std::fs::write(&script, sql)?;
        run_checked(
            "psql",
            as_postgres(&self.bin.join("psql"))
                .arg("-h")
                .arg(&self.dir)
                .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f"])
                .arg(&script),
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------
// MariaDB

/// Whether what the MySQL-protocol test needs besides [`downstream_prerequisites`] is
/// here (mariadbd, mariadb-install-db, the `mariadb` client, the `mysql` user, PyMySQL
/// next to the other Python modules); when not, the test is recorded as skipped.
#[must_use]
pub fn mariadb_prerequisites() -> bool {
    let mut missing: Vec<String> = ["mariadbd", "mariadb-install-db", "mariadb", "chown"]
        .iter()
        .filter(|t| find_program(t).is_none())
        .map(|t| t.to_string())
        .collect();
    let mysql_user = Command::new("id")
        .arg("mysql")
        .output()
        .is_ok_and(|o| o.status.success());
    if !mysql_user {
        missing.push("the mysql user (made by mariadb-server)".into());
    }
    let mut modules = PYTHON_MODULES.to_vec();
    modules.push(MYSQL_PYTHON_MODULE);
    if python_with(&modules).is_none() {
        missing.push(format!("python modules {}", modules.join(", ")));
    }
    if missing.is_empty() {
        return true;
    }
    skip(&format!("prerequisites missing: {}", missing.join(", ")));
    false
}

/// A throwaway MariaDB server (run as the `mysql` user, no option files: nothing of a
/// system MariaDB's configuration, port or socket) on a free loopback port: database
/// `shop` with `items(id, name)` (ids 1..=20 and 4242, named `canary-secret-42`) that
/// user [`MYSQL_APP_USER`]@127.0.0.1 (password [`MYSQL_APP_PASSWORD`],
/// mysql_native_password) may read, and `secrets(id, v)` it may not (ERR 1142). Every
/// command the server receives is in its general log.
pub struct MariaDb {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

const MARIADB_SETUP: &str = "
CREATE DATABASE shop;
CREATE TABLE shop.items (id int PRIMARY KEY, name varchar(64) NOT NULL);
INSERT INTO shop.items WITH RECURSIVE s (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 20)
    SELECT i, CONCAT('item-', i) FROM s;
INSERT INTO shop.items VALUES (4242, 'canary-secret-42');
CREATE TABLE shop.secrets (id int, v varchar(64));
INSERT INTO shop.secrets VALUES (1, 'canary-secret-row');
CREATE USER '@USER@'@'127.0.0.1' IDENTIFIED BY '@PASSWORD@';
GRANT SELECT ON shop.items TO '@USER@'@'127.0.0.1';
";

impl MariaDb {
    pub fn start() -> Result<Self> {
        let mariadbd = find_program("mariadbd").context("mariadbd is not installed")?;
        let install_db =
            find_program("mariadb-install-db").context("mariadb-install-db is not installed")?;
        stop_leftovers("mariadb", "mariadbd");
        let dir = scratch_dir("mariadb");
        // The server runs as the mysql user: the scratch dir (data, socket, logs) is its.
        run_checked("chown", Command::new("chown").arg("mysql:mysql").arg(&dir))?;
        let data = dir.join("data");
        // root@localhost logs in over the socket by unix_socket (we are root), with no
        // password over TCP; no test database, no anonymous user.
        run_checked(
            "mariadb-install-db",
            Command::new(install_db)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args([
                    "--user=mysql",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                    "--skip-name-resolve",
                ])
                .stdin(Stdio::null()),
        )?;
        let port = free_port();
        let child = Command::new(mariadbd)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", dir.join("mysql.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .arg(format!(
                "--general-log-file={}",
                dir.join("general.log").display()
            ))
            .args([
                "--user=mysql",
                "--bind-address=127.0.0.1",
                "--general-log=1",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
            ])
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("stdout"))?)
            .stderr(File::create(dir.join("stderr"))?)
            .spawn()
            .context("starting mariadbd")?;
        std::fs::write(dir.join("pid"), child.id().to_string())?;
        let mut me = Self { port, child, dir };
        let ready = wait_for(Duration::from_secs(30), || {
            if let Ok(Some(_)) = me.child.try_wait() {
                return Some(false);
            }
            me.sql("SELECT 1").ok().map(|_| true)
        });
        if ready != Some(true) {
            bail!("mariadbd did not start; {}", me.errors());
        }
        let setup = MARIADB_SETUP
            .replace("@USER@", MYSQL_APP_USER)
            .replace("@PASSWORD@", MYSQL_APP_PASSWORD);
        me.sql(&setup)
            .with_context(|| format!("setting up the server; {}", me.errors()))?;
        wait_listening(format!("127.0.0.1:{port}").parse()?)?;
        Ok(me)
    }

    /// Run `sql` with the `mariadb` client as root over the Unix socket; returns its
    /// output (tab-separated, no column names).
    pub fn sql(&self, sql: &str) -> Result<String> {
        let script = self.dir.join("script.sql");
        std::fs::write(&script, sql)?;
        run_checked(
            "mariadb",
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!(
                    "--socket={}",
                    self.dir.join("mysql.sock").display()
                ))
                .args(["--user=root", "--batch", "--skip-column-names"])
                .stdin(File::open(&script)?),
        )
    }

    /// The server's general log: every connection and command.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("general.log")).unwrap_or_default()
    }

    /// The server's error log and stderr.
    pub fn errors(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "error log:\n{}\nstderr:\n{}",
            read("error.log"),
            read("stderr")
        )
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------
// The API server

/// `tests/servers/downstream_api.py` in a private mount namespace whose
/// `/etc/resolv.conf` is `nameserver <dns>` (no search list, one attempt), listening on
/// `0.0.0.0:<port>`. Its stdout (one line per request) is kept in its scratch dir.
pub struct DownstreamApi {
    pub port: u16,
    proc: Proc,
    dir: PathBuf,
}

impl DownstreamApi {
    pub fn start(dns: &str, pg_port: u16, redis_port: u16) -> Result<Self> {
        Self::start_with_mysql(dns, pg_port, redis_port, None)
    }

    /// [`DownstreamApi::start`], and with `mysql_port` its `/mysql` route logs in to the
    /// MariaDB server there (as [`MYSQL_APP_USER`]); without, that route answers 503.
    pub fn start_with_mysql(
        dns: &str,
        pg_port: u16,
        redis_port: u16,
        mysql_port: Option<u16>,
    ) -> Result<Self> {
        let mut modules = PYTHON_MODULES.to_vec();
        if mysql_port.is_some() {
            modules.push(MYSQL_PYTHON_MODULE);
        }
        let python = python_with(&modules)
            .with_context(|| format!("no python3 imports {}", modules.join(", ")))?;
        stop_leftovers("downstream-api", "python3");
        let dir = scratch_dir("downstream-api");
        let resolv = dir.join("resolv.conf");
        std::fs::write(
            &resolv,
            format!("nameserver {dns}\noptions attempts:1 timeout:1\n"),
        )?;
        let port = free_port();
        let script = workspace_root().join("tests/servers/downstream_api.py");
        // `unshare -m` execs sh (no fork), sh execs python: the child's pid is python's.
        // unshare makes the new namespace's mounts private, so the bind mount stays in it.
        let inner = "mount --bind \"$1\" /etc/resolv.conf && shift && exec \"$@\"";
        let child = Command::new("unshare")
            .args(["-m", "sh", "-c", inner, "sh"])
            .arg(&resolv)
            .arg(&python)
            .arg("-u")
            .arg(&script)
            .args(["--port", &port.to_string(), "--dns", dns])
            .args(["--pg-port", &pg_port.to_string()])
            .args(["--redis-port", &redis_port.to_string()])
            .args(["--pg-password-role", PG_PASSWORD_ROLE])
            .args(mysql_port.into_iter().flat_map(|p| {
                [
                    format!("--mysql-port={p}"),
                    format!("--mysql-user={MYSQL_APP_USER}"),
                    format!("--mysql-password={MYSQL_APP_PASSWORD}"),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("stdout"))?)
            .stderr(File::create(dir.join("stderr"))?)
            .spawn()
            .context("starting downstream_api.py under unshare")?;
        std::fs::write(dir.join("pid"), child.id().to_string())?;
        let mut me = Self {
            port,
            proc: Proc {
                child,
                name: "downstream_api.py".into(),
            },
            dir,
        };
        let ready = wait_for(Duration::from_secs(15), || {
            if let Ok(Some(_)) = me.proc.child.try_wait() {
                return Some(false);
            }
            me.output().lines().any(|l| l == "ready").then_some(true)
        });
        if ready != Some(true) {
            bail!(
                "downstream_api.py did not start; stdout:\n{}\nstderr:\n{}",
                me.output(),
                me.errors()
            );
        }
        wait_listening(format!("127.0.0.1:{port}").parse()?)?;
        Ok(me)
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// What the server printed: `ready`, then one line per request.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    /// The server's stderr (tracebacks).
    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for DownstreamApi {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
