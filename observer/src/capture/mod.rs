//! Capture: load the kernel programs, attach them, seed the sockets that existed before
//! start, and hand out the ring buffer of records.

pub mod decode;
pub mod gosym;
pub mod metrics;
pub mod procfs;
pub mod tls;
pub mod tracefs;

use anyhow::{bail, Context as _};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use observer_common::{
    drop_reason, CaptureConfig as KernelConfig, SocketKey, SocketOrders, SocketState,
};

use crate::{config::CaptureConfig, exchange::Role};
use procfs::ExistingSocket;
use tracefs::TracefsGuard;

/// The kernel object built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// One hook: the program in the object and the tracepoint it attaches to.
pub struct ProbeSpec {
    pub program: &'static str,
    pub category: &'static str,
    pub name: &'static str,
    /// Without a required probe the agent cannot work and refuses to start; an optional
    /// one that fails is reported and the agent goes on.
    pub required: bool,
}

const fn probe(
    program: &'static str,
    category: &'static str,
    name: &'static str,
    required: bool,
) -> ProbeSpec {
    ProbeSpec {
        program,
        category,
        name,
        required,
    }
}

/// The tracepoints the agent attaches besides the syscalls'.
pub const PROBES: &[ProbeSpec] = &[
    probe("tcp_rcv_space_adjust", "tcp", "tcp_rcv_space_adjust", false),
    probe("process_exec", "sched", "sched_process_exec", false),
    probe("thread_exit", "sched", "sched_process_exit", false),
    probe("tcp_state", "sock", "inet_sock_set_state", false),
];

/// The two raw syscall tracepoints, each with its dispatcher program of the same name
/// (`observer-ebpf`'s `probes/mod.rs`): every syscall hook below goes through them.
pub const SYSCALL_DISPATCH: [&str; 2] = ["sys_enter", "sys_exit"];

/// One syscall hook: the program the dispatcher tail-calls for the syscall's number, on
/// entry or on return. `point` names it like the syscall's own tracepoint.
pub struct SyscallHook {
    pub program: &'static str,
    pub point: &'static str,
    pub nr: libc::c_long,
    pub exit: bool,
    /// As for [`ProbeSpec::required`].
    pub required: bool,
}

const fn enter(
    program: &'static str,
    point: &'static str,
    nr: libc::c_long,
    required: bool,
) -> SyscallHook {
    SyscallHook {
        program,
        point,
        nr,
        exit: false,
        required,
    }
}

const fn exit(
    program: &'static str,
    point: &'static str,
    nr: libc::c_long,
    required: bool,
) -> SyscallHook {
    SyscallHook {
        program,
        point,
        nr,
        exit: true,
        required,
    }
}

// The kernel's return hook knows the data syscalls by their x86-64 numbers.
const _: () = {
    use observer_common::syscall_nr as nr;
    assert!(libc::SYS_read as u64 == nr::READ && libc::SYS_write as u64 == nr::WRITE);
    assert!(libc::SYS_readv as u64 == nr::READV && libc::SYS_writev as u64 == nr::WRITEV);
    assert!(libc::SYS_sendfile as u64 == nr::SENDFILE && libc::SYS_sendto as u64 == nr::SENDTO);
    assert!(libc::SYS_recvfrom as u64 == nr::RECVFROM && libc::SYS_sendmsg as u64 == nr::SENDMSG);
    assert!(libc::SYS_recvmsg as u64 == nr::RECVMSG && libc::SYS_sendmmsg as u64 == nr::SENDMMSG);
};

/// Every syscall hook, in one place. Data calls are handled at their return (the
/// arguments are still in the saved registers); a receive's entry is hooked only to name
/// sockets whose addresses are not known yet.
pub const SYSCALL_HOOKS: &[SyscallHook] = &[
    enter("enter_accept", "sys_enter_accept", libc::SYS_accept, false),
    exit("exit_accept", "sys_exit_accept", libc::SYS_accept, false),
    enter("enter_accept", "sys_enter_accept4", libc::SYS_accept4, true),
    exit("exit_accept", "sys_exit_accept4", libc::SYS_accept4, true),
    enter(
        "enter_connect",
        "sys_enter_connect",
        libc::SYS_connect,
        true,
    ),
    exit("exit_connect", "sys_exit_connect", libc::SYS_connect, true),
    enter("enter_close", "sys_enter_close", libc::SYS_close, true),
    enter("enter_receive", "sys_enter_read", libc::SYS_read, true),
    exit("exit_data", "sys_exit_read", libc::SYS_read, true),
    exit("exit_data", "sys_exit_write", libc::SYS_write, true),
    enter(
        "enter_receive",
        "sys_enter_recvfrom",
        libc::SYS_recvfrom,
        true,
    ),
    exit("exit_data", "sys_exit_recvfrom", libc::SYS_recvfrom, true),
    exit("exit_data", "sys_exit_sendto", libc::SYS_sendto, true),
    enter("enter_receive", "sys_enter_readv", libc::SYS_readv, false),
    exit("exit_data", "sys_exit_readv", libc::SYS_readv, false),
    exit("exit_data", "sys_exit_writev", libc::SYS_writev, false),
    enter(
        "enter_receive",
        "sys_enter_recvmsg",
        libc::SYS_recvmsg,
        false,
    ),
    exit("exit_data", "sys_exit_recvmsg", libc::SYS_recvmsg, false),
    exit("exit_data", "sys_exit_sendmsg", libc::SYS_sendmsg, false),
    exit(
        "exit_sendmmsg",
        "sys_exit_sendmmsg",
        libc::SYS_sendmmsg,
        false,
    ),
    exit(
        "exit_data",
        "sys_exit_sendfile64",
        libc::SYS_sendfile,
        false,
    ),
];

/// How attaching one probe went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeStatus {
    pub program: &'static str,
    pub attach_point: String,
    pub attached: bool,
    pub error: Option<String>,
}

/// The loaded and attached kernel programs. Dropping it detaches everything (the links
/// belong to the `Ebpf` object) and unmounts tracefs if the agent mounted it.
pub struct Capture {
    /// The programs and the maps the TLS attachment uses; handed to the TLS thread when
    /// there is one ([`Capture::take_ebpf`]).
    ebpf: Option<Ebpf>,
    /// The maps the draining task itself writes and reads, taken out of the object so
    /// that it never waits for the TLS thread.
    sockets: HashMap<MapData, SocketKey, SocketState>,
    orders: HashMap<MapData, SocketKey, SocketOrders>,
    drops: PerCpuArray<MapData, u64>,
    /// The ring buffer of records, until the draining task takes it.
    ring: Option<RingBuf<MapData>>,
    /// Ids of the socket and orders maps, for [`sweep_sockets`].
    sweep_ids: (u32, u32),
    pub probes: Vec<ProbeStatus>,
    // Declared last: dropped after the links.
    _tracefs: TracefsGuard,
}

fn raise_memlock() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        // Kernels with memcg accounting of BPF memory do not need it.
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn privilege_hint(err: &dyn std::fmt::Display) -> String {
    let text = err.to_string();
    if text.contains("EPERM")
        || text.contains("Operation not permitted")
        || text.contains("permission")
    {
        format!("{text}: missing privileges (run as root, or grant CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)")
    } else {
        text
    }
}

/// For the overhead benchmark's floor: empty programs on the two raw syscall
/// tracepoints the agent hooks, attached until `seconds` have passed.
pub fn empty_syscall_hooks(seconds: u64) -> anyhow::Result<()> {
    if EBPF_OBJECT.is_empty() {
        bail!("this agent was built without its eBPF object (AYA_BUILD_SKIP was set)");
    }
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    for (point, program) in SYSCALL_DISPATCH
        .iter()
        .zip(["floor_sys_enter", "floor_sys_exit"])
    {
        load_raw(&mut ebpf, program)?
            .attach(point)
            .with_context(|| format!("attaching {program}"))?;
    }
    println!("attached");
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    Ok(())
}

impl Capture {
    /// Load and attach every probe. Fails with a clear message when a required one
    /// cannot be attached.
    /// `downstream`: also follow the UDP sockets processes ask DNS servers through.
    pub fn start(
        settings: &CaptureConfig,
        tls_filter: bool,
        downstream: bool,
    ) -> anyhow::Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!("this agent was built without its eBPF object (AYA_BUILD_SKIP was set); rebuild without it");
        }
        let tracefs = TracefsGuard::ensure()?;
        raise_memlock();
        // The kernel's tables follow the configured limits: a socket per followed
        // connection, a call in flight per thread busy on one.
        let sockets = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", settings.ring_buffer_bytes)
            .map_max_entries("SOCKETS", sockets)
            .map_max_entries("TLS_SOCKETS", sockets)
            .map_max_entries("ORDERS", sockets)
            .map_max_entries("INFLIGHT", (sockets / 4).clamp(1024, 65536))
            .load(EBPF_OBJECT)
            .map_err(|e| anyhow::anyhow!(privilege_hint(&e)))
            .context("loading the eBPF object")?;

        let tuple = match tracefs.tcp_tuple_offsets() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("socket addresses will come from /proc only: {e:#}");
                Default::default()
            }
        };
        let mut kernel_config = KernelConfig {
            capture_bytes: settings.capture_bytes,
            agent_pid: std::process::id(),
            wakeup_bytes: u64::from(settings.ring_buffer_bytes / 8),
            tuple,
            tls_filter: u32::from(tls_filter),
            tcp_state_offset: 0,
            downstream: u32::from(downstream),
            _pad: 0,
        };
        let mut config: Array<_, KernelConfig> =
            Array::try_from(ebpf.map_mut("CONFIG").context("CONFIG map missing")?)?;
        config.set(0, kernel_config, 0).context("writing CONFIG")?;

        let mut probes = attach_syscalls(&mut ebpf)?;
        for spec in PROBES {
            let result = attach(&mut ebpf, spec);
            let status = ProbeStatus {
                program: spec.program,
                attach_point: format!("{}:{}", spec.category, spec.name),
                attached: result.is_ok(),
                error: result.as_ref().err().map(|e| format!("{e:#}")),
            };
            match result {
                Ok(()) => tracing::debug!("attached {}", status.attach_point),
                Err(e) if spec.required => {
                    return Err(anyhow::anyhow!(privilege_hint(&format!("{e:#}")))).with_context(
                        || format!("attaching required probe {}", status.attach_point),
                    );
                }
                Err(e) => {
                    tracing::warn!("optional probe {} not attached: {e:#}", status.attach_point)
                }
            }
            probes.push(status);
        }
        // With the TCP state hook in place, connects that start no TCP handshake (UDP)
        // are not followed; without it, every connect is.
        let state_hook = probes
            .iter()
            .any(|p| p.program == "tcp_state" && p.attached);
        match tracefs.field_offset("sock/inet_sock_set_state", "newstate") {
            Ok(offset) if state_hook => {
                kernel_config.tcp_state_offset = offset;
                let mut config: Array<_, KernelConfig> =
                    Array::try_from(ebpf.map_mut("CONFIG").context("CONFIG map missing")?)?;
                config.set(0, kernel_config, 0).context("writing CONFIG")?;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("UDP sockets that connect will be followed: {e:#}"),
        }
        let sweep_ids = (map_id(&ebpf, "SOCKETS")?, map_id(&ebpf, "ORDERS")?);
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("{name} map missing"))
        };
        let sockets = HashMap::try_from(take("SOCKETS")?)?;
        let orders = HashMap::try_from(take("ORDERS")?)?;
        let drops = PerCpuArray::try_from(take("DROPS")?)?;
        let ring = RingBuf::try_from(take("EVENTS")?)?;
        Ok(Self {
            ebpf: Some(ebpf),
            sockets,
            orders,
            drops,
            ring: Some(ring),
            sweep_ids,
            probes,
            _tracefs: tracefs,
        })
    }

    /// The loaded object, for attaching more programs (TLS targets); `None` once taken.
    pub fn ebpf_mut(&mut self) -> Option<&mut Ebpf> {
        self.ebpf.as_mut()
    }

    /// Hand the programs to another thread (the TLS attachment's): dropping them there
    /// detaches every probe. The maps the draining task uses stay here.
    pub fn take_ebpf(&mut self) -> Option<Ebpf> {
        self.ebpf.take()
    }

    /// The ring buffer of records (can be taken once).
    pub fn take_ring(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        self.ring.take().context("EVENTS ring buffer already taken")
    }

    /// Make the kernel trace sockets that existed before start.
    pub fn seed(&mut self, sockets: &[ExistingSocket]) -> anyhow::Result<usize> {
        let map = &mut self.sockets;
        let mut n = 0;
        for s in sockets {
            let state = SocketState {
                role: match s.role {
                    Role::Server => observer_common::ROLE_SERVER,
                    Role::Client => observer_common::ROLE_CLIENT,
                },
                flags: observer_common::SOCKET_FLAG_ADDRESSES_KNOWN,
                opened_ns: 0,
                offsets: [0; 4],
            };
            let key = SocketKey {
                pid: s.pid,
                fd: s.fd,
            };
            if map.insert(key, state, 0).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Stop copying the bytes of sockets the agent does not parse: `(pid, fd, opened_ns)`
    /// of each, where `opened_ns` tells the socket from a later one on the same fd (a
    /// socket already closed, or replaced, is left alone). Returns how many were marked.
    pub fn unfollow(&mut self, sockets: &[(u32, u32, u64)]) -> anyhow::Result<usize> {
        let map = &mut self.sockets;
        let mut n = 0;
        for &(pid, fd, opened_ns) in sockets {
            let key = SocketKey { pid, fd };
            let Ok(mut state) = map.get(&key, 0) else {
                continue;
            };
            if state.opened_ns != opened_ns {
                continue;
            }
            state.flags |= observer_common::SOCKET_FLAG_IGNORED;
            // BPF_EXIST: never re-create an entry the kernel removed meanwhile.
            if map.insert(key, state, BPF_EXIST).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Ask the kernel to count long bodies without copying them (see `SocketOrders`).
    /// Returns how many orders were written.
    pub fn order_skips(&mut self, skips: &[crate::conn::Skip]) -> anyhow::Result<usize> {
        let map = &mut self.orders;
        let mut n = 0;
        for s in skips {
            let key = SocketKey {
                pid: s.pid,
                fd: s.fd,
            };
            let mut orders = match map.get(&key, 0) {
                Ok(o) if o.opened_ns == s.opened_ns => o,
                _ => SocketOrders {
                    opened_ns: s.opened_ns,
                    ..Default::default()
                },
            };
            let Some(slot) = orders.skip_until.get_mut(s.index) else {
                continue;
            };
            *slot = (*slot).max(s.until);
            if map.insert(key, orders, 0).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Ids of the kernel's socket and orders maps, for [`sweep_sockets`] on another
    /// thread.
    pub fn sweep_map_ids(&self) -> (u32, u32) {
        self.sweep_ids
    }

    /// Kernel-side drop counters summed over CPUs, by `drop_reason` index.
    pub fn kernel_drops(&self) -> anyhow::Result<[u64; drop_reason::COUNT as usize]> {
        let map = &self.drops;
        let mut out = [0u64; drop_reason::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = map.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }
}

/// Id of hash map `name` of the object.
fn map_id(ebpf: &Ebpf, name: &str) -> anyhow::Result<u32> {
    let map = ebpf
        .map(name)
        .with_context(|| format!("{name} map missing"))?;
    let aya::maps::Map::HashMap(data) = map else {
        bail!("{name} is not a hash map");
    };
    Ok(data.info()?.id())
}

/// What a sweep of the kernel's socket map found.
#[derive(Debug, Default, Clone, Copy)]
pub struct SocketSweep {
    /// Entries in the map.
    pub entries: usize,
    /// Entries removed: their process exited, or the fd is no longer a socket (closed
    /// without a `close` the kernel hooks saw: process exit, `dup2`, exec).
    pub removed: usize,
}

/// Remove the entries of sockets that are gone from the kernel's socket map (by id, so
/// that it runs on a blocking thread, off the draining task). Not a loss: the sockets
/// are closed.
pub fn sweep_sockets((sockets_id, orders_id): (u32, u32)) -> anyhow::Result<SocketSweep> {
    let data = MapData::from_id(sockets_id).context("opening the SOCKETS map")?;
    let mut map: HashMap<MapData, SocketKey, SocketState> =
        HashMap::try_from(aya::maps::Map::HashMap(data))?;
    // Orders left for sockets that are gone (closed as the order was written).
    let data = MapData::from_id(orders_id).context("opening the ORDERS map")?;
    let mut orders: HashMap<MapData, SocketKey, SocketOrders> =
        HashMap::try_from(aya::maps::Map::HashMap(data))?;
    let stale: Vec<SocketKey> = orders
        .keys()
        .filter_map(Result::ok)
        .filter(|k| map.get(k, 0).is_err())
        .collect();
    for k in stale {
        let _ = orders.remove(&k);
    }
    let entries: Vec<(SocketKey, SocketState)> = map.iter().filter_map(Result::ok).collect();
    let mut sweep = SocketSweep {
        entries: entries.len(),
        removed: 0,
    };
    for (key, state) in entries {
        if socket_open(key.pid, key.fd) {
            continue;
        }
        // Only the socket looked at: not a new one that took its fd meanwhile.
        let same = map
            .get(&key, 0)
            .is_ok_and(|now| now.opened_ns == state.opened_ns);
        if same && map.remove(&key).is_ok() {
            sweep.removed += 1;
        }
    }
    Ok(sweep)
}

/// Whether fd `fd` of process `pid` is (still) a socket. Unknown (no permission) counts
/// as open.
fn socket_open(pid: u32, fd: u32) -> bool {
    match std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
        Ok(target) => target
            .as_os_str()
            .as_encoded_bytes()
            .starts_with(b"socket:"),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// `BPF_EXIST`: a map update that only replaces an existing entry.
const BPF_EXIST: u64 = 2;

/// Fill the syscall dispatch tables, then attach the two dispatchers. A required hook
/// that cannot be loaded stops the start; an optional one is reported and left out.
fn attach_syscalls(ebpf: &mut Ebpf) -> anyhow::Result<Vec<ProbeStatus>> {
    let mut statuses = Vec::new();
    let mut fds = Vec::new();
    for hook in SYSCALL_HOOKS {
        let result = load_raw(ebpf, hook.program).and_then(|p| {
            let slot = u32::try_from(hook.nr)
                .ok()
                .filter(|&n| n < observer_common::SYSCALL_SLOTS)
                .context("syscall number outside the dispatch table")?;
            Ok((slot, p.fd()?.try_clone()?))
        });
        let status = ProbeStatus {
            program: hook.program,
            attach_point: format!("syscalls:{}", hook.point),
            attached: result.is_ok(),
            error: result.as_ref().err().map(|e| format!("{e:#}")),
        };
        match result {
            Ok((slot, fd)) => fds.push((hook.exit, slot, fd)),
            Err(e) if hook.required => {
                return Err(anyhow::anyhow!(privilege_hint(&format!("{e:#}"))))
                    .with_context(|| format!("loading required probe {}", status.attach_point));
            }
            Err(e) => tracing::warn!("optional probe {} not attached: {e:#}", status.attach_point),
        }
        statuses.push(status);
    }
    for (table, exit) in [("ENTER_CALLS", false), ("EXIT_CALLS", true)] {
        let mut calls: ProgramArray<_> = ProgramArray::try_from(
            ebpf.map_mut(table)
                .with_context(|| format!("{table} map missing"))?,
        )?;
        for (_, slot, fd) in fds.iter().filter(|(e, _, _)| *e == exit) {
            calls
                .set(*slot, fd, 0)
                .with_context(|| format!("filling {table}"))?;
        }
    }
    for program in SYSCALL_DISPATCH {
        let point = program;
        let dispatcher = load_raw(ebpf, program)?;
        dispatcher
            .attach(point)
            .map_err(|e| anyhow::anyhow!(privilege_hint(&format!("{e:#}"))))
            .with_context(|| format!("attaching the raw syscall tracepoint {point}"))?;
        statuses.push(ProbeStatus {
            program,
            attach_point: format!("raw_syscalls:{point}"),
            attached: true,
            error: None,
        });
    }
    Ok(statuses)
}

/// The raw tracepoint program `name`, loaded (and verified) once however many slots it
/// fills.
fn load_raw<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut RawTracePoint> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()?;
    if program.fd().is_err() {
        program.load().context("loading (verifier)")?;
    }
    Ok(program)
}

fn attach(ebpf: &mut Ebpf, spec: &ProbeSpec) -> anyhow::Result<()> {
    let program: &mut TracePoint = ebpf
        .program_mut(spec.program)
        .with_context(|| format!("program {} missing from the object", spec.program))?
        .try_into()?;
    // One program may serve several tracepoints (the data exits): loaded (and verified)
    // once.
    if program.fd().is_err() {
        program.load().context("loading (verifier)")?;
    }
    program
        .attach(spec.category, spec.name)
        .context("attaching")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::socket_open;

    #[test]
    fn only_open_sockets_count_as_open() {
        let me = std::process::id();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(socket_open(me, listener.as_raw_fd() as u32));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(!socket_open(me, file.as_raw_fd() as u32));
        // A process that does not exist.
        assert!(!socket_open(u32::MAX - 1, 3));
    }
}
