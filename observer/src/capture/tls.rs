//! TLS: find the code that encrypts (OpenSSL or BoringSSL in a shared library or inside a
//! program, Go's `crypto/tls` inside a Go program) in running and newly started processes
//! and attach the library probes of `observer-ebpf/src/probes/tls.rs` to it.
//!
//! A probe is attached to a file (by inode) for every process at once, so a shared
//! library is attached once however many processes map it; a program's probes are
//! released when the last process running it exits. Failures are reported in the status
//! and the log, never fatal.
//!
//! Analyses are cached by [`FileKey`]: device, inode, size, modification time and the
//! ELF build id, so a file rewritten in place (same inode) is analysed again and its
//! probes moved to the new offsets.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    num::NonZeroU32,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    maps::HashMap as BpfHashMap,
    programs::{
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
        UProbe,
    },
    Ebpf,
};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};

use super::gosym;

/// `[tls]`: which processes' TLS plaintext is captured.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Probe TLS libraries at all.
    pub enabled: bool,
    /// Only these processes (empty: no filter by pid).
    pub pids: Vec<u32>,
    /// Only processes running these programs: a full path, or a file name (empty: no
    /// filter by program). File names are also matched in the kernel by `comm`, so such
    /// a program is seen from its first call; full paths and cgroups are matched when
    /// the agent looks at the process (at start, at its exec, and every 10 s).
    pub executables: Vec<String>,
    /// Only processes whose cgroup path contains one of these strings, such as a
    /// container id or `kubepods` (empty: no filter by cgroup).
    pub cgroups: Vec<String>,
    /// Also attach to `libssl.so*` in the system library directories at start, so that
    /// programs started later that load it are covered from their first call.
    pub system_libraries: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            pids: Vec::new(),
            executables: Vec::new(),
            cgroups: Vec::new(),
            system_libraries: true,
        }
    }
}

impl TlsConfig {
    /// A process filter is configured: the kernel reports only listed processes.
    pub fn filtered(&self) -> bool {
        !(self.pids.is_empty() && self.executables.is_empty() && self.cgroups.is_empty())
    }

    /// Probes are attached per process: a filter by pid or cgroup only. A process left
    /// out then never traps in the TLS library; one let in is covered from when the agent
    /// looks at it (at start, at its exec and shortly after, and every 10 s). A filter by
    /// program name keeps one probe per file for every process, checked in the kernel by
    /// `comm`, so that such a program is seen from its very first call.
    pub fn per_process(&self) -> bool {
        self.filtered() && self.executables.is_empty()
    }

    /// Whether process `pid` (running `exe`, in cgroups `cgroup`) passes the filter.
    pub fn wants(&self, pid: u32, exe: &str, cgroup: &str) -> bool {
        if !self.filtered() {
            return true;
        }
        let name = Path::new(exe)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        self.pids.contains(&pid)
            || self.executables.iter().any(|e| e == exe || e == name)
            || self
                .cgroups
                .iter()
                .any(|c| !c.is_empty() && cgroup.contains(c.as_str()))
    }
}

/// Which TLS implementation a target carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Library {
    /// OpenSSL 1.1/3.x or BoringSSL (same `SSL_*` entry points).
    OpenSsl,
    /// Go `crypto/tls`.
    Go,
}

impl Library {
    fn as_str(self) -> &'static str {
        match self {
            Self::OpenSsl => "openssl",
            Self::Go => "go",
        }
    }
}

/// OpenSSL entry points and the program attached at each entry. The handshake calls
/// carry no data; they let the kernel learn the socket of libraries that do their own
/// buffering (node) before the first write.
const OPENSSL_SYMBOLS: [(&str, &str); 7] = [
    ("SSL_read", "ssl_read"),
    ("SSL_write", "ssl_write"),
    ("SSL_read_ex", "ssl_read_ex"),
    ("SSL_write_ex", "ssl_write_ex"),
    ("SSL_do_handshake", "ssl_handshake"),
    ("SSL_connect", "ssl_handshake"),
    ("SSL_accept", "ssl_handshake"),
];
/// Programs larger than this leave enough freed memory after their analysis to be worth
/// returning to the system.
const TRIM_AFTER_READING: u64 = 4 * 1024 * 1024;
/// The return probe shared by the four.
const OPENSSL_RETURN: &str = "ssl_return";
const GO_READ: &str = "crypto/tls.(*Conn).Read";
const GO_WRITE: &str = "crypto/tls.(*Conn).Write";

/// Every program this module attaches (loaded once at start).
pub const PROGRAMS: [&str; 9] = [
    "ssl_read",
    "ssl_handshake",
    "ssl_write",
    "ssl_read_ex",
    "ssl_write_ex",
    OPENSSL_RETURN,
    "go_tls_read",
    "go_tls_write",
    "go_tls_read_return",
];

/// What a file offers to probe, as file offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Analysis {
    OpenSsl {
        /// (symbol, file offset) of each entry point found.
        entries: Vec<(&'static str, u64)>,
    },
    Go {
        version: Option<String>,
        read: u64,
        /// File offsets of `Read`'s `RET` instructions.
        read_returns: Vec<u64>,
        write: u64,
    },
    /// A Go program whose TLS functions cannot be probed, and why.
    Unsupported { library: Library, reason: String },
}

impl Analysis {
    fn library(&self) -> Library {
        match self {
            Self::OpenSsl { .. } => Library::OpenSsl,
            Self::Go { .. } => Library::Go,
            Self::Unsupported { library, .. } => *library,
        }
    }

    fn symbols(&self) -> Vec<String> {
        match self {
            Self::OpenSsl { entries } => entries.iter().map(|(s, _)| s.to_string()).collect(),
            Self::Go { .. } => vec![GO_READ.to_string(), GO_WRITE.to_string()],
            Self::Unsupported { .. } => Vec::new(),
        }
    }
}

fn file_offset<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, address: u64) -> Option<u64> {
    obj.sections().find_map(|s| {
        let (offset, size) = s.file_range()?;
        (address >= s.address() && address < s.address() + size)
            .then(|| address - s.address() + offset)
    })
}

/// Look into an ELF file for TLS code. `Ok(None)`: nothing to probe.
pub fn analyze(path: &Path) -> anyhow::Result<Option<Analysis>> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let cache = object::ReadCache::new(file);
    let Ok(obj) = object::File::parse(&cache) else {
        return Ok(None); // not an object file
    };
    if obj.architecture() != object::Architecture::X86_64 {
        return Ok(None);
    }
    let mut entries = Vec::new();
    for table in [obj.dynamic_symbols(), obj.symbols()] {
        for sym in table {
            if !sym.is_definition() || sym.address() == 0 {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            if let Some((symbol, _)) = OPENSSL_SYMBOLS.iter().find(|(s, _)| *s == name) {
                if entries.iter().all(|(s, _)| s != symbol) {
                    if let Some(offset) = file_offset(&obj, sym.address()) {
                        entries.push((*symbol, offset));
                    }
                }
            }
        }
        if !entries.is_empty() {
            break;
        }
    }
    let has = |name: &str| entries.iter().any(|(s, _)| *s == name);
    if has("SSL_read") && has("SSL_write") {
        entries.sort_by_key(|(s, _)| OPENSSL_SYMBOLS.iter().position(|(o, _)| o == s));
        return Ok(Some(Analysis::OpenSsl { entries }));
    }
    let Some(pclntab) = obj
        .section_by_name(".gopclntab")
        .or_else(|| obj.section_by_name(".data.rel.ro.gopclntab"))
    else {
        return Ok(None);
    };
    let version = obj
        .section_by_name(".go.buildinfo")
        .and_then(|s| s.data().ok())
        .and_then(gosym::build_version);
    let unsupported = |reason: String| {
        Ok(Some(Analysis::Unsupported {
            library: Library::Go,
            reason,
        }))
    };
    let text = obj
        .section_by_name(".text")
        .map(|s| s.address())
        .unwrap_or(0);
    let data = pclntab.data().context("reading .gopclntab")?;
    let table = match gosym::PcLnTab::parse(data, text) {
        Ok(t) => t,
        Err(e) => return unsupported(e.to_string()),
    };
    let (read, write) = match (table.find(GO_READ), table.find(GO_WRITE)) {
        (Ok(Some(r)), Ok(Some(w))) => (r, w),
        (Err(e), _) | (_, Err(e)) => return unsupported(e.to_string()),
        _ => return Ok(None), // a Go program without crypto/tls
    };
    let code = obj
        .sections()
        .find(|s| s.address() <= read.start && read.end <= s.address() + s.size())
        .and_then(|s| {
            s.data_range(read.start, read.end - read.start)
                .ok()
                .flatten()
        });
    let Some(code) = code else {
        return unsupported(format!("{GO_READ} is outside every section"));
    };
    let returns = gosym::ret_offsets(code, read.start);
    let (Some(read_offset), Some(write_offset)) = (
        file_offset(&obj, read.start),
        file_offset(&obj, write.start),
    ) else {
        return unsupported("TLS functions have no file offset".into());
    };
    if returns.is_empty() {
        return unsupported(format!("no RET instruction found in {GO_READ}"));
    }
    Ok(Some(Analysis::Go {
        version,
        read: read_offset,
        read_returns: returns.iter().map(|r| read_offset + r).collect(),
        write: write_offset,
    }))
}

/// One probed file, as `/api/tls` and the log show it.
#[derive(Clone, Debug, Serialize)]
pub struct TargetStatus {
    pub library: Library,
    pub path: String,
    /// Functions probed.
    pub symbols: Vec<String>,
    /// Go toolchain version, for Go programs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go_version: Option<String>,
    /// Processes known to run this code.
    pub pids: BTreeSet<u32>,
    pub attached: bool,
    /// Why attaching failed (or why the code cannot be probed).
    pub error: Option<String>,
    /// Found in the system library directories at start (kept with no process).
    pub system: bool,
}

struct Target {
    status: TargetStatus,
    /// Probes that fire for every process that runs the file.
    links: Vec<(&'static str, UProbeLinkId)>,
    /// Where the file is probed (per process, when they are attached per process).
    points: Vec<(&'static str, u64)>,
    /// Probes attached for one process only (a filter by pid or cgroup): other
    /// processes that run the file never trap.
    pid_links: HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// What an analysis is valid for: the inode plus what changes when the file is
/// rewritten in place (size, modification time, build id).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FileKey {
    id: FileId,
    size: u64,
    mtime_ns: i128,
    /// GNU build-id note or Go build id note, when the file has one.
    build_id: Option<Box<[u8]>>,
}

impl FileKey {
    fn of(meta: &fs::Metadata, path: &Path) -> Self {
        Self {
            id: FileId::of(meta),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            build_id: build_id(path).map(Vec::into_boxed_slice),
        }
    }
}

/// `NT_GNU_BUILD_ID` (note name `GNU`).
const NT_GNU_BUILD_ID: u32 = 3;
/// Go's build id note type (note name `Go`, section `.note.go.buildid`).
const NT_GO_BUILD_ID: u32 = 4;

/// The build id in the notes of a 64-bit ELF file (only its headers and notes are read).
fn build_id(path: &Path) -> Option<Vec<u8>> {
    use object::read::elf::{FileHeader as _, ProgramHeader as _};
    let file = fs::File::open(path).ok()?;
    let data = object::ReadCache::new(file);
    let header = object::elf::FileHeader64::<object::Endianness>::parse(&data).ok()?;
    let endian = header.endian().ok()?;
    let mut go = None;
    for segment in header.program_headers(endian, &data).ok()? {
        let Ok(Some(mut notes)) = segment.notes(endian, &data) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            match (note.name(), note.n_type(endian)) {
                (b"GNU", NT_GNU_BUILD_ID) => return Some(note.desc().to_vec()),
                (b"Go", NT_GO_BUILD_ID) => go = Some(note.desc().to_vec()),
                _ => {}
            }
        }
    }
    go
}

/// Analyses of files by inode, each valid for one [`FileKey`]: a file rewritten in
/// place gets a new key, and is analysed again.
#[derive(Default)]
struct AnalysisCache {
    by_inode: HashMap<FileId, (FileKey, Option<Arc<Analysis>>)>,
}

impl AnalysisCache {
    /// The key of `open` now and its analysis (cached, or made by `analyze`). `None`
    /// when the file cannot be looked at.
    fn lookup(
        &mut self,
        open: &Path,
        analyze: impl FnOnce(&Path) -> anyhow::Result<Option<Analysis>>,
    ) -> Option<(FileKey, Option<Arc<Analysis>>)> {
        let meta = fs::metadata(open).ok()?;
        let key = FileKey::of(&meta, open);
        if let Some((cached, analysis)) = self.by_inode.get(&key.id) {
            if *cached == key {
                return Some((key, analysis.clone()));
            }
        }
        let analysis = match analyze(open) {
            Ok(a) => a.map(Arc::new),
            Err(e) => {
                tracing::debug!("tls: cannot read {}: {e:#}", open.display());
                None
            }
        };
        if meta.len() > TRIM_AFTER_READING {
            // Reading a large program's symbol tables leaves tens of MiB free in the
            // allocator; hand them back to the system rather than keep them resident.
            // SAFETY: malloc_trim has no preconditions.
            unsafe { libc::malloc_trim(0) };
        }
        self.by_inode
            .insert(key.id, (key.clone(), analysis.clone()));
        Some((key, analysis))
    }
}

/// Prometheus view of the attachments.
struct TlsMetrics {
    processes: IntGaugeVec,
    failures: IntCounterVec,
}

impl TlsMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let processes = IntGaugeVec::new(
            Opts::new(
                "api_observer_tls_target_processes",
                "Processes covered by each attached TLS target (library or program), by library and path.",
            ),
            &["library", "path"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "api_observer_tls_attach_failures_total",
                "TLS targets that could not be probed, by library (the log and /api/tls say why).",
            ),
            &["library"],
        )?;
        registry.register(Box::new(processes.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        for library in [Library::OpenSsl, Library::Go] {
            failures.with_label_values(&[library.as_str()]);
        }
        Ok(Self {
            processes,
            failures,
        })
    }

    /// The process count of an attached target (targets that failed have no series).
    fn show(&self, status: &TargetStatus) {
        if status.attached {
            self.processes
                .with_label_values(&[status.library.as_str(), &status.path])
                .set(status.pids.len() as i64);
        }
    }
}

/// Rescans of a process after `exec`: its libraries are mapped by the dynamic loader
/// after the exec event, and by `dlopen` later still.
const RESCANS_AFTER_EXEC: [Duration; 3] = [
    Duration::from_millis(30),
    Duration::from_millis(300),
    Duration::from_secs(2),
];
/// Every process is looked at again this often (forked children, late `dlopen`).
const FULL_SCAN_EVERY: Duration = Duration::from_secs(10);

/// Finds TLS code in processes and keeps the probes on it attached.
pub struct TlsProbes {
    config: TlsConfig,
    agent_pid: u32,
    /// The agent's root directory: a process with another one is in another mount
    /// namespace and its files are opened through `/proc/<pid>/root`.
    own_root: Option<FileId>,
    analyses: AnalysisCache,
    targets: HashMap<FileKey, Target>,
    /// Targets each process is counted in.
    covered: HashMap<u32, Vec<FileKey>>,
    /// Processes let through the kernel's filter (`TLS_PIDS`).
    allowed: BTreeSet<u32>,
    rescans: Vec<(u32, Instant, usize)>,
    next_full_scan: Instant,
    metrics: TlsMetrics,
    /// Set when the status changed since the last `take_changed`.
    changed: bool,
}

impl TlsProbes {
    /// Load the programs (not attached yet). Fails when the kernel refuses them.
    pub fn new(ebpf: &mut Ebpf, config: TlsConfig, registry: &Registry) -> anyhow::Result<Self> {
        for name in PROGRAMS {
            let program: &mut UProbe = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("loading {name} (verifier)"))?;
        }
        if config.filtered() {
            write_comm_filter(ebpf, &config.executables)?;
        }
        Ok(Self {
            config,
            agent_pid: std::process::id(),
            own_root: fs::metadata("/proc/self/root").ok().map(|m| FileId::of(&m)),
            analyses: AnalysisCache::default(),
            targets: HashMap::new(),
            covered: HashMap::new(),
            allowed: BTreeSet::new(),
            rescans: Vec::new(),
            next_full_scan: Instant::now() + FULL_SCAN_EVERY,
            metrics: TlsMetrics::register(registry)?,
            changed: true,
        })
    }

    /// Attach to the system's libssl and to every running process's TLS code.
    pub fn start(&mut self, ebpf: &mut Ebpf) {
        // Per process, a system library is probed for each process that maps it.
        if self.config.system_libraries && !self.config.per_process() {
            for path in system_libraries() {
                self.consider(ebpf, &path, &path, None);
            }
        }
        self.scan_all(ebpf);
        for t in self.targets.values() {
            log_target(&t.status);
        }
    }

    /// Status of every target, sorted by path.
    pub fn status(&self) -> Vec<TargetStatus> {
        let mut out: Vec<_> = self.targets.values().map(|t| t.status.clone()).collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// Whether the status changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// A process called `exec`: forget what it ran before, look at the new program now
    /// and again shortly (its libraries are not mapped yet).
    pub fn on_exec(&mut self, ebpf: &mut Ebpf, pid: u32) {
        self.forget(ebpf, pid);
        self.scan_process(ebpf, pid);
        let now = Instant::now();
        self.rescans.push((pid, now + RESCANS_AFTER_EXEC[0], 0));
    }

    /// Periodic work: rescans after exec and the full scan (exited processes are released
    /// by `reap`, on the agent's one-second tick).
    pub fn poll(&mut self, ebpf: &mut Ebpf) {
        let now = Instant::now();
        let due: Vec<_> = self
            .rescans
            .iter()
            .filter(|(_, at, _)| *at <= now)
            .copied()
            .collect();
        self.rescans.retain(|(_, at, _)| *at > now);
        for (pid, _, attempt) in due {
            self.scan_process(ebpf, pid);
            if let Some(delay) = RESCANS_AFTER_EXEC.get(attempt + 1) {
                let wait = *delay - RESCANS_AFTER_EXEC[attempt];
                self.rescans.push((pid, now + wait, attempt + 1));
            }
        }
        if now >= self.next_full_scan {
            self.next_full_scan = now + FULL_SCAN_EVERY;
            self.scan_all(ebpf);
        }
    }

    /// Release processes that exited; detach targets left with none.
    pub fn reap(&mut self, ebpf: &mut Ebpf) {
        let gone: Vec<u32> = self
            .covered
            .keys()
            .chain(self.allowed.iter())
            .copied()
            .filter(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        for pid in gone {
            self.forget(ebpf, pid);
        }
    }

    fn scan_all(&mut self, ebpf: &mut Ebpf) {
        let Ok(dir) = fs::read_dir("/proc") else {
            return;
        };
        let pids: Vec<u32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        for pid in pids {
            self.scan_process(ebpf, pid);
        }
    }

    fn scan_process(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if pid == self.agent_pid {
            return;
        }
        let exe = fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if exe.is_empty() {
            return; // kernel thread, or gone
        }
        if self.config.filtered() {
            let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if !self.config.wants(pid, &exe, &cgroup) {
                return;
            }
            if self.allowed.insert(pid) {
                self.set_allowed(ebpf, pid, true);
            }
        }
        let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        let root = process_root(pid, self.own_root);
        for path in executable_mappings(&maps) {
            let open = match &root {
                Some(root) => root.join(path.trim_start_matches('/')),
                None => PathBuf::from(path),
            };
            self.consider(ebpf, &open, Path::new(path), Some(pid));
        }
    }

    /// Look at one file (cached by inode, size, mtime and build id); attach when it has
    /// TLS code; count `pid`.
    fn consider(&mut self, ebpf: &mut Ebpf, open: &Path, shown: &Path, pid: Option<u32>) {
        let Some((key, analysis)) = self.analyses.lookup(open, analyze) else {
            return;
        };
        let Some(analysis) = analysis else {
            return;
        };
        if !self.targets.contains_key(&key) {
            // The file was rewritten in place: the probes of its old content sit at
            // stale offsets. Move its processes to the new target.
            let stale = self
                .targets
                .keys()
                .find(|k| k.id == key.id)
                .cloned()
                .and_then(|k| self.targets.remove(&k).map(|t| (k, t)));
            if let Some((_, old)) = &stale {
                tracing::info!("tls: {} changed on disk; probes moved", old.status.path);
                let _ = self
                    .metrics
                    .processes
                    .remove_label_values(&[old.status.library.as_str(), old.status.path.as_str()]);
            }
            let stale = stale.map(|(k, mut old)| {
                detach_links(ebpf, std::mem::take(&mut old.links));
                for (_, links) in std::mem::take(&mut old.pid_links) {
                    detach_links(ebpf, links);
                }
                (k, old)
            });
            let mut target = self.attach(ebpf, open, shown, &analysis, pid.is_none());
            if let (true, Some(pid)) = (self.config.per_process(), pid) {
                Self::attach_for(ebpf, open, &mut target, pid);
            }
            if let Some((old_key, old)) = stale {
                target.status.system |= old.status.system;
                for p in &old.status.pids {
                    if let Some(keys) = self.covered.get_mut(p) {
                        keys.retain(|k| *k != old_key);
                        keys.push(key.clone());
                    }
                }
                if self.config.per_process() {
                    for p in &old.status.pids {
                        Self::attach_for(ebpf, open, &mut target, *p);
                    }
                }
                target.status.pids.extend(old.status.pids);
                self.metrics.show(&target.status);
            }
            if pid.is_some() {
                log_target(&target.status);
            }
            self.targets.insert(key.clone(), target);
            self.changed = true;
        }
        let Some(pid) = pid else { return };
        let target = self.targets.get_mut(&key).expect("inserted above");
        if self.config.per_process() {
            Self::attach_for(ebpf, open, target, pid);
        }
        if target.status.pids.insert(pid) {
            self.covered.entry(pid).or_default().push(key);
            self.changed = true;
            self.metrics.show(&target.status);
        }
    }

    fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        open: &Path,
        shown: &Path,
        analysis: &Analysis,
        system: bool,
    ) -> Target {
        let mut status = TargetStatus {
            library: analysis.library(),
            path: shown.display().to_string(),
            symbols: analysis.symbols(),
            go_version: match analysis {
                Analysis::Go { version, .. } => version.clone(),
                _ => None,
            },
            pids: BTreeSet::new(),
            attached: false,
            error: None,
            system,
        };
        let mut points: Vec<(&'static str, u64)> = Vec::new();
        match analysis {
            Analysis::OpenSsl { entries } => {
                for (symbol, offset) in entries {
                    let program = OPENSSL_SYMBOLS
                        .iter()
                        .find(|(s, _)| s == symbol)
                        .map(|(_, p)| *p)
                        .expect("known symbol");
                    points.push((program, *offset));
                    points.push((OPENSSL_RETURN, *offset));
                }
            }
            Analysis::Go {
                read,
                read_returns,
                write,
                ..
            } => {
                points.push(("go_tls_read", *read));
                points.push(("go_tls_write", *write));
                for r in read_returns {
                    points.push(("go_tls_read_return", *r));
                }
            }
            Analysis::Unsupported { reason, .. } => status.error = Some(reason.clone()),
        }
        let mut links = Vec::new();
        if status.error.is_none() && !self.config.per_process() {
            match attach_points(ebpf, open, &points, &mut links, UProbeScope::AllProcesses) {
                Ok(()) => status.attached = true,
                Err(e) => {
                    status.error = Some(format!("{e:#}"));
                    detach_links(ebpf, std::mem::take(&mut links));
                }
            }
            if !status.attached {
                self.metrics
                    .failures
                    .with_label_values(&[status.library.as_str()])
                    .inc();
            }
        } else if status.error.is_some() {
            self.metrics
                .failures
                .with_label_values(&[status.library.as_str()])
                .inc();
        }
        self.metrics.show(&status);
        Target {
            status,
            links,
            points,
            pid_links: HashMap::new(),
        }
    }

    /// Per-process mode: attach `target`'s probes for `pid` alone.
    fn attach_for(ebpf: &mut Ebpf, open: &Path, target: &mut Target, pid: u32) {
        let Some(one) = NonZeroU32::new(pid) else {
            return;
        };
        if target.status.error.is_some() || target.pid_links.contains_key(&pid) {
            return;
        }
        let mut links = Vec::new();
        match attach_points(
            ebpf,
            open,
            &target.points,
            &mut links,
            UProbeScope::OneProcess(one),
        ) {
            Ok(()) => {
                target.status.attached = true;
                target.pid_links.insert(pid, links);
            }
            Err(e) => {
                tracing::debug!("tls: attaching {} for pid {pid}: {e:#}", target.status.path);
                detach_links(ebpf, links);
            }
        }
    }

    /// Stop counting `pid`; detach targets left without a process (but not the system
    /// libraries, which programs started later will load).
    fn forget(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if self.allowed.remove(&pid) {
            self.set_allowed(ebpf, pid, false);
        }
        let Some(ids) = self.covered.remove(&pid) else {
            return;
        };
        self.changed = true;
        for id in ids {
            let Some(target) = self.targets.get_mut(&id) else {
                continue;
            };
            target.status.pids.remove(&pid);
            if let Some(links) = target.pid_links.remove(&pid) {
                detach_links(ebpf, links);
            }
            if target.links.is_empty() && target.pid_links.is_empty() {
                target.status.attached = false;
            }
            if !target.status.pids.is_empty() || target.status.system {
                self.metrics.show(&target.status);
                continue;
            }
            let target = self.targets.remove(&id).expect("present");
            let _ = self.metrics.processes.remove_label_values(&[
                target.status.library.as_str(),
                target.status.path.as_str(),
            ]);
            tracing::info!(
                "tls: released {} {} (no process runs it any more)",
                target.status.library.as_str(),
                target.status.path
            );
            detach_links(ebpf, target.links);
            for (_, links) in target.pid_links {
                detach_links(ebpf, links);
            }
        }
    }

    fn set_allowed(&self, ebpf: &mut Ebpf, pid: u32, allowed: bool) {
        let Some(map) = ebpf.map_mut("TLS_PIDS") else {
            return;
        };
        let Ok(mut map) = BpfHashMap::<_, u32, u32>::try_from(map) else {
            return;
        };
        let result = if allowed {
            map.insert(pid, 1, 0)
        } else {
            map.remove(&pid)
        };
        if let Err(e) = result {
            tracing::warn!("tls: updating the process filter for pid {pid}: {e}");
        }
    }
}

/// Programs named by file name are also matched in the kernel by `comm` (its first 15
/// bytes), so that they are seen from their first call, before the agent has looked at
/// them.
fn write_comm_filter(ebpf: &mut Ebpf, executables: &[String]) -> anyhow::Result<()> {
    let mut map = BpfHashMap::<_, [u8; 16], u32>::try_from(
        ebpf.map_mut("TLS_COMMS").context("TLS_COMMS map missing")?,
    )?;
    for exe in executables {
        let name = Path::new(exe)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(exe);
        map.insert(comm_key(name), 1, 0)
            .with_context(|| format!("adding {name} to the TLS process filter"))?;
    }
    Ok(())
}

/// A program name as the kernel keeps it in `comm`: at most 15 bytes, NUL-padded.
pub fn comm_key(name: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    let bytes = name.as_bytes();
    let n = bytes.len().min(15);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}

fn attach_points(
    ebpf: &mut Ebpf,
    path: &Path,
    points: &[(&'static str, u64)],
    links: &mut Vec<(&'static str, UProbeLinkId)>,
    scope: UProbeScope,
) -> anyhow::Result<()> {
    for (program, offset) in points {
        let probe: &mut UProbe = ebpf
            .program_mut(program)
            .with_context(|| format!("program {program} missing"))?
            .try_into()?;
        let link = probe
            .attach(UProbeAttachLocation::AbsoluteOffset(*offset), path, scope)
            .with_context(|| format!("attaching {program} at offset {offset:#x}"))?;
        links.push((program, link));
    }
    Ok(())
}

fn detach_links(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) {
    for (program, link) in links {
        let probe: Option<&mut UProbe> = ebpf.program_mut(program).and_then(|p| p.try_into().ok());
        if let Some(probe) = probe {
            if let Err(e) = probe.detach(link) {
                tracing::debug!("tls: detaching {program}: {e}");
            }
        }
    }
}

fn log_target(status: &TargetStatus) {
    if status.attached {
        tracing::info!(
            "tls: attached {} {}{} ({}), {} process(es)",
            status.library.as_str(),
            status.path,
            status
                .go_version
                .as_ref()
                .map(|v| format!(" [{v}]"))
                .unwrap_or_default(),
            status.symbols.join(", "),
            status.pids.len()
        );
    } else {
        tracing::warn!(
            "tls: cannot probe {} {}: {}",
            status.library.as_str(),
            status.path,
            status.error.as_deref().unwrap_or("unknown reason")
        );
    }
}

/// `libssl.so*` in the usual library directories.
pub(crate) fn system_libraries() -> Vec<PathBuf> {
    const DIRS: [&str; 6] = [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
    ];
    let mut out = Vec::new();
    for dir in DIRS {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("libssl.so") {
                // One name per library file (`/lib` may be `/usr/lib`; `libssl.so` is
                // a link to `libssl.so.3`).
                let path = fs::canonicalize(e.path()).unwrap_or_else(|_| e.path());
                if !out.contains(&path) {
                    out.push(path);
                }
            }
        }
    }
    out.sort();
    out
}

/// The process's root directory when it differs from the agent's (another mount
/// namespace, such as a container): its files are opened through `/proc/<pid>/root`.
fn process_root(pid: u32, ours: Option<FileId>) -> Option<PathBuf> {
    let theirs = fs::metadata(format!("/proc/{pid}/root")).ok()?;
    (Some(FileId::of(&theirs)) != ours).then(|| PathBuf::from(format!("/proc/{pid}/root")))
}

/// Paths of the files a process maps executable, in `/proc/<pid>/maps` order, once each.
pub fn executable_mappings(maps: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.splitn(6, ' ');
        let (Some(_range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if perms.as_bytes().get(2) != Some(&b'x') {
            continue;
        }
        let Some(path) = fields.nth(3).map(str::trim_start) else {
            continue;
        };
        if !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        if !out.contains(&path) {
            out.push(path);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_mappings_keeps_files_once_and_skips_the_rest() {
        let maps = "\
00400000-00401000 r--p 00000000 08:01 123 /usr/bin/node
00401000-00500000 r-xp 00001000 08:01 123 /usr/bin/node
7f0000000000-7f0000001000 r-xp 00000000 08:01 456                        /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000002000-7f0000003000 r-xp 00001000 08:01 456                        /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000004000-7f0000005000 rw-p 00000000 00:00 0 
7f0000006000-7f0000007000 r-xp 00000000 08:01 789 /tmp/old.so (deleted)
7ffc00000000-7ffc00001000 r-xp 00000000 00:00 0                          [vdso]
7f0000008000-7f0000009000 r-xp 00000000 08:01 999 /opt/my app/lib.so
";
        assert_eq!(
            executable_mappings(maps),
            vec![
                "/usr/bin/node",
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                "/opt/my app/lib.so"
            ]
        );
    }

    #[test]
    fn filter_by_pid_program_or_cgroup() {
        let open = TlsConfig::default();
        assert!(!open.filtered());
        assert!(open.wants(1, "/usr/bin/anything", ""));

        let config = TlsConfig {
            pids: vec![42],
            executables: vec!["nginx".into(), "/usr/bin/node".into()],
            cgroups: vec!["kubepods".into()],
            ..TlsConfig::default()
        };
        assert!(config.filtered());
        assert!(config.wants(42, "/usr/bin/curl", ""));
        assert!(config.wants(7, "/usr/sbin/nginx", ""));
        assert!(config.wants(7, "/usr/bin/node", ""));
        assert!(!config.wants(7, "/opt/node", ""));
        assert!(config.wants(7, "/usr/bin/curl", "0::/kubepods/burstable/pod1/abc\n"));
        assert!(!config.wants(7, "/usr/bin/curl", "0::/system.slice/ssh.service\n"));
    }

    #[test]
    fn comm_keys_are_truncated_like_the_kernel_does() {
        assert_eq!(&comm_key("curl")[..5], b"curl\0");
        let long = comm_key("a-very-long-program-name");
        assert_eq!(&long[..15], b"a-very-long-pro");
        assert_eq!(long[15], 0);
    }

    #[test]
    fn finds_openssl_entry_points_in_the_system_library() {
        let Some(lib) = system_libraries()
            .into_iter()
            .find(|p| p.to_string_lossy().ends_with("libssl.so.3"))
        else {
            // Counted as a skip by `cargo xtask test` (never as a pass).
            let reason = "finds_openssl_entry_points: no libssl.so.3 on this machine\n";
            eprintln!("SKIPPED {reason}");
            if let Some(log) = std::env::var_os("OBSERVER_SKIP_LOG") {
                use std::io::Write as _;
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .and_then(|mut f| f.write_all(reason.as_bytes()))
                    .expect("recording a skip");
            }
            return;
        };
        let Some(Analysis::OpenSsl { entries }) = analyze(&lib).unwrap() else {
            panic!("{} has no OpenSSL entry points", lib.display());
        };
        let names: Vec<_> = entries.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            names,
            vec![
                "SSL_read",
                "SSL_write",
                "SSL_read_ex",
                "SSL_write_ex",
                "SSL_do_handshake",
                "SSL_connect",
                "SSL_accept"
            ]
        );
        assert!(entries.iter().all(|(_, offset)| *offset > 0));
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tls-cache-{}-{name}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Overwrite `path` in place (same inode) with `bytes`.
    fn rewrite_in_place(path: &Path, bytes: &[u8]) {
        use std::io::Write as _;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
    }

    fn ino(path: &Path) -> u64 {
        fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn a_file_rewritten_in_place_is_analysed_again() {
        let dir = scratch("rewrite");
        let path = dir.join("prog");
        // A real ELF file first (this test program), then other content, same inode.
        let exe = fs::read(std::env::current_exe().unwrap()).unwrap();
        fs::write(&path, &exe).unwrap();
        let inode = ino(&path);
        let mut cache = AnalysisCache::default();
        let calls = std::cell::Cell::new(0);
        let count = |p: &Path| {
            calls.set(calls.get() + 1);
            analyze(p)
        };
        let (k1, a1) = cache.lookup(&path, count).unwrap();
        assert_eq!(a1, None, "a Rust program has no TLS code");
        cache.lookup(&path, count).unwrap();
        assert_eq!(calls.get(), 1, "unchanged: served from the cache");
        let fake = OPENSSL_SYMBOLS
            .iter()
            .map(|(s, _)| (*s, 0x1000))
            .collect::<Vec<_>>();
        // Cache a (fake) OpenSSL analysis for this content ...
        cache.by_inode.insert(
            k1.id,
            (
                k1.clone(),
                Some(Arc::new(Analysis::OpenSsl { entries: fake })),
            ),
        );
        // ... then rewrite the file in place with different content.
        rewrite_in_place(&path, b"#!/bin/sh\necho no TLS here\n");
        assert_eq!(ino(&path), inode, "same inode");
        let (k2, a2) = cache.lookup(&path, count).unwrap();
        assert_ne!(k1, k2);
        assert_eq!(a2, None, "the stale OpenSSL analysis is not returned");
        assert_eq!(calls.get(), 2);
        assert_eq!(cache.by_inode.len(), 1, "one entry per inode");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_build_id_is_part_of_the_key() {
        let dir = scratch("buildid");
        let path = dir.join("prog");
        let mut exe = fs::read(std::env::current_exe().unwrap()).unwrap();
        fs::write(&path, &exe).unwrap();
        let Some(id) = build_id(&path) else {
            eprintln!("SKIPPED the_build_id_is_part_of_the_key: test binary has no build id");
            return;
        };
        assert!(id.len() >= 8, "{id:?}");
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        let mut cache = AnalysisCache::default();
        let (k1, _) = cache.lookup(&path, |_| Ok(None)).unwrap();
        assert_eq!(k1.build_id.as_deref(), Some(id.as_slice()));
        // Same size, same mtime (restored), another build id: still a miss.
        let at = exe
            .windows(id.len())
            .position(|w| w == id.as_slice())
            .unwrap();
        exe[at] ^= 0xff;
        rewrite_in_place(&path, &exe);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let mut analysed = false;
        let (k2, _) = cache
            .lookup(&path, |_| {
                analysed = true;
                Ok(None)
            })
            .unwrap();
        assert_eq!((k1.id, k1.size, k1.mtime_ns), (k2.id, k2.size, k2.mtime_ns));
        assert_ne!(k1.build_id, k2.build_id);
        assert!(analysed, "a new build id is analysed again");
        assert_eq!(build_id(Path::new("/nonexistent")), None);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_program_without_tls_code_has_nothing_to_probe() {
        let exe = std::env::current_exe().unwrap();
        // The test binary is Rust: no SSL_* symbols, no Go table.
        assert_eq!(analyze(&exe).unwrap(), None);
        // Not an object file at all.
        let dir = std::env::temp_dir().join(format!("tls-analyze-{}", std::process::id()));
        fs::write(&dir, b"#!/bin/sh\necho hi\n").unwrap();
        assert_eq!(analyze(&dir).unwrap(), None);
        fs::remove_file(&dir).unwrap();
    }
}
