//! Sockets that existed before the agent started, found through `/proc`: every
//! established TCP socket of every process, with its addresses and role.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use crate::exchange::Role;

/// An established TCP connection held by a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingSocket {
    pub pid: u32,
    pub fd: u32,
    pub comm: String,
    pub role: Role,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// One line of `/proc/<pid>/net/tcp` or `tcp6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub inode: u64,
}

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_LISTEN: u8 = 10;

fn parse_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => {
            let raw = u32::from_str_radix(ip, 16).ok()?;
            IpAddr::V4(Ipv4Addr::from(raw.to_ne_bytes()))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parse the text of `/proc/net/tcp` or `/proc/net/tcp6`; malformed lines are skipped.
pub fn parse_proc_net_tcp(text: &str) -> Vec<TcpEntry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(TcpEntry {
                local: parse_addr(f.get(1)?)?,
                remote: parse_addr(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Every established TCP connection of every process except `skip_pid`.
pub fn existing_connections(skip_pid: u32) -> Vec<ExistingSocket> {
    // Group processes by network namespace: each namespace has its own socket tables.
    let mut by_netns: HashMap<String, Vec<u32>> = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == skip_pid {
            continue;
        }
        if let Ok(ns) = fs::read_link(format!("/proc/{pid}/ns/net")) {
            by_netns
                .entry(ns.to_string_lossy().into_owned())
                .or_default()
                .push(pid);
        }
    }
    let mut found = Vec::new();
    for pids in by_netns.values() {
        let Some(&first) = pids.first() else { continue };
        let mut table: HashMap<u64, TcpEntry> = HashMap::new();
        let mut listening: HashSet<u16> = HashSet::new();
        for name in ["tcp", "tcp6"] {
            let text = fs::read_to_string(format!("/proc/{first}/net/{name}")).unwrap_or_default();
            for e in parse_proc_net_tcp(&text) {
                match e.state {
                    TCP_LISTEN => {
                        listening.insert(e.local.port());
                    }
                    TCP_ESTABLISHED => {
                        table.insert(e.inode, e);
                    }
                    _ => {}
                }
            }
        }
        if table.is_empty() {
            continue;
        }
        for &pid in pids {
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end().to_string())
                .unwrap_or_default();
            for fd_entry in fds.flatten() {
                let Some(fd) = fd_entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                let Some(inode) = fs::read_link(fd_entry.path())
                    .ok()
                    .and_then(|l| socket_inode(&l.to_string_lossy()))
                else {
                    continue;
                };
                if let Some(e) = table.get(&inode) {
                    found.push(ExistingSocket {
                        pid,
                        fd,
                        comm: comm.clone(),
                        role: role_of(e, &listening),
                        local: e.local,
                        remote: e.remote,
                    });
                }
            }
        }
    }
    found
}

/// A connection whose local port is a listening port was accepted: the process serves it.
pub fn role_of(entry: &TcpEntry, listening: &HashSet<u16>) -> Role {
    if listening.contains(&entry.local.port()) {
        Role::Server
    } else {
        Role::Client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 20 4 30 10 -1
   2: garbage line
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0050 00000000000000000000000001000000:D431 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 20 4 0 10 -1
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:C351 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 20 4 0 10 -1
";

    #[test]
    fn parses_ipv4_table() {
        let e = parse_proc_net_tcp(TCP);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(e[0].state, TCP_LISTEN);
        assert_eq!(e[1].remote, "127.0.0.1:50000".parse().unwrap());
        assert_eq!((e[1].state, e[1].inode), (TCP_ESTABLISHED, 2222));
    }

    #[test]
    fn parses_ipv6_and_mapped() {
        let e = parse_proc_net_tcp(TCP6);
        assert_eq!(e[0].local, "[::1]:80".parse().unwrap());
        assert_eq!(e[0].remote, "[::1]:54321".parse().unwrap());
        assert_eq!(e[1].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(e[1].remote, "127.0.0.1:50001".parse().unwrap());
    }

    #[test]
    fn role_from_listening_ports() {
        let e = parse_proc_net_tcp(TCP);
        let listening: HashSet<u16> = [8080].into();
        assert_eq!(role_of(&e[1], &listening), Role::Server);
        assert_eq!(role_of(&e[1], &HashSet::new()), Role::Client);
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[1]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn finds_a_live_connection_of_this_process() {
        // A real loopback connection inside the test process: /proc must show both ends.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let me = std::process::id();
        let found: Vec<_> = existing_connections(0)
            .into_iter()
            .filter(|s| s.pid == me)
            .collect();
        let client_side = found
            .iter()
            .find(|s| s.local == client.local_addr().unwrap())
            .expect("client end found");
        assert_eq!(client_side.role, Role::Client);
        let server_side = found
            .iter()
            .find(|s| s.remote == client.local_addr().unwrap())
            .expect("server end found");
        assert_eq!(server_side.role, Role::Server);
    }
}
