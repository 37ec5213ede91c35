//! Kernel records → [`Event`]: every length is checked against the record's size, the
//! kind goes through `TryFrom`, nothing is transmuted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use observer_common::{
    DataEvent, EventHeader, EventKind, SocketEvent, AF_INET, AF_INET6, DATA_FLAG_OFFSETS,
    DATA_HEADER_LEN, DIR_EGRESS, DIR_INGRESS, MAX_CAPTURE, ROLE_CLIENT, ROLE_SERVER, SOURCE_TLS,
};

use crate::{exchange::Role, http::Offsets};

/// Why a record could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("data record claims {claimed} payload bytes but carries {present}")]
    BadLength { claimed: usize, present: usize },
    #[error("unknown direction {0}")]
    BadDirection(u32),
}

impl DecodeError {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Short(_) => "decode_short",
            Self::UnknownKind(_) => "decode_kind",
            Self::BadLength { .. } => "decode_length",
            Self::BadDirection(_) => "decode_direction",
        }
    }
}

/// Where a socket event came from and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    pub pid: u32,
    pub fd: u32,
    pub ts_ns: u64,
    pub role: Option<Role>,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub comm: String,
    /// A datagram (UDP) socket: each data record is one datagram.
    pub datagram: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Into the process (read side).
    Ingress,
    /// Out of the process (write side).
    Egress,
}

/// A decoded kernel record. `Data` borrows its payload from the ring buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Accept(SocketInfo),
    Connect(SocketInfo),
    Addresses(SocketInfo),
    Close {
        pid: u32,
        fd: u32,
        ts_ns: u64,
    },
    /// A process started a new program.
    Exec {
        pid: u32,
    },
    Data {
        pid: u32,
        /// The thread that made the call.
        tid: u32,
        /// Its user `R14`: a Go program's goroutine.
        g: u64,
        fd: u32,
        ts_ns: u64,
        direction: Direction,
        tls: bool,
        len: u64,
        /// Where the call's bytes sit in the socket's streams, when the kernel counted
        /// them.
        offsets: Option<Offsets>,
        payload: &'a [u8],
    },
}

fn read<T: Copy + Default>(bytes: &[u8]) -> Result<T, DecodeError> {
    let size = std::mem::size_of::<T>();
    if bytes.len() < size {
        return Err(DecodeError::Short(bytes.len()));
    }
    let mut value = T::default();
    // SAFETY: T is one of the `repr(C)` plain-integer records of observer-common, valid
    // for any bit pattern; the source holds at least size_of::<T>() bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut value as *mut T).cast::<u8>(), size);
    }
    Ok(value)
}

fn addr(family: u16, raw: [u8; 16], port: u16) -> Option<SocketAddr> {
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(raw);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn socket_info(ev: &SocketEvent, with_local: bool) -> SocketInfo {
    SocketInfo {
        pid: ev.header.pid,
        fd: ev.header.fd,
        ts_ns: ev.header.ts_ns,
        role: match ev.role {
            ROLE_SERVER => Some(Role::Server),
            ROLE_CLIENT => Some(Role::Client),
            _ => None,
        },
        local: if with_local {
            addr(ev.family, ev.local_addr, ev.local_port)
        } else {
            None
        },
        remote: addr(ev.family, ev.remote_addr, ev.remote_port),
        comm: comm(&ev.comm),
        datagram: ev.flags & observer_common::SOCKET_EVENT_DATAGRAM != 0,
    }
}

/// Decode one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let header: EventHeader = read(bytes)?;
    let kind = EventKind::try_from(header.kind).map_err(DecodeError::UnknownKind)?;
    Ok(match kind {
        EventKind::Accept => Event::Accept(socket_info(&read::<SocketEvent>(bytes)?, false)),
        EventKind::Connect => Event::Connect(socket_info(&read::<SocketEvent>(bytes)?, false)),
        EventKind::Addresses => Event::Addresses(socket_info(&read::<SocketEvent>(bytes)?, true)),
        EventKind::Close => Event::Close {
            pid: header.pid,
            fd: header.fd,
            ts_ns: header.ts_ns,
        },
        EventKind::Exec => Event::Exec { pid: header.pid },
        EventKind::Data => {
            let data: DataEvent = read(bytes)?;
            let claimed = data.captured as usize;
            let present = bytes.len() - DATA_HEADER_LEN;
            if claimed > present || claimed > MAX_CAPTURE || claimed as u64 > data.len {
                return Err(DecodeError::BadLength { claimed, present });
            }
            let direction = match data.direction {
                DIR_INGRESS => Direction::Ingress,
                DIR_EGRESS => Direction::Egress,
                other => return Err(DecodeError::BadDirection(other)),
            };
            Event::Data {
                pid: header.pid,
                tid: header.tid,
                g: data.g,
                fd: header.fd,
                ts_ns: header.ts_ns,
                direction,
                tls: data.source == SOURCE_TLS,
                len: data.len,
                offsets: (data.flags & DATA_FLAG_OFFSETS != 0).then_some(Offsets {
                    own: data.offset,
                    peer: data.peer_offset,
                }),
                payload: &bytes[DATA_HEADER_LEN..DATA_HEADER_LEN + claimed],
            }
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn as_bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a repr(C) record.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    pub(crate) fn data_record(dir: u32, len: u64, payload: &[u8]) -> Vec<u8> {
        let ev = DataEvent {
            header: EventHeader {
                kind: EventKind::Data as u32,
                pid: 7,
                tid: 7,
                fd: 3,
                ts_ns: 99,
            },
            direction: dir,
            source: 0,
            len,
            captured: payload.len() as u32,
            ..Default::default()
        };
        let mut bytes = as_bytes(&ev);
        bytes.extend_from_slice(payload);
        bytes
    }

    /// A data record stamped with the kernel's byte counts.
    pub(crate) fn data_record_at(
        dir: u32,
        payload: &[u8],
        ts_ns: u64,
        fd: u32,
        offset: u64,
        peer_offset: u64,
    ) -> Vec<u8> {
        let ev = DataEvent {
            header: EventHeader {
                kind: EventKind::Data as u32,
                pid: 100,
                tid: 100,
                fd,
                ts_ns,
            },
            direction: dir,
            len: payload.len() as u64,
            captured: payload.len() as u32,
            flags: DATA_FLAG_OFFSETS,
            offset,
            peer_offset,
            ..Default::default()
        };
        let mut bytes = as_bytes(&ev);
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn offsets_only_when_flagged() {
        let bytes = data_record_at(DIR_EGRESS, b"HTTP/1.1 200 OK\r\n", 5, 3, 700, 90);
        let Event::Data { offsets, .. } = decode(&bytes).unwrap() else {
            panic!("not data")
        };
        assert_eq!(offsets, Some(Offsets { own: 700, peer: 90 }));
        let Event::Data { offsets, .. } = decode(&data_record(DIR_EGRESS, 3, b"abc")).unwrap()
        else {
            panic!("not data")
        };
        assert_eq!(offsets, None);
    }

    #[test]
    fn data_record_round_trip() {
        let bytes = data_record(DIR_INGRESS, 1000, b"GET / HTTP/1.1\r\n");
        match decode(&bytes).unwrap() {
            Event::Data {
                pid,
                fd,
                direction,
                len,
                payload,
                tls,
                ..
            } => {
                assert_eq!((pid, fd, len, tls), (7, 3, 1000, false));
                assert_eq!(direction, Direction::Ingress);
                assert_eq!(payload, b"GET / HTTP/1.1\r\n");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn lying_lengths_are_rejected() {
        let mut bytes = data_record(DIR_EGRESS, 10, b"abcdef");
        bytes.truncate(bytes.len() - 2);
        assert!(matches!(decode(&bytes), Err(DecodeError::BadLength { .. })));
        // captured larger than the call's byte count
        let bytes = data_record(DIR_EGRESS, 2, b"abcdef");
        assert!(matches!(decode(&bytes), Err(DecodeError::BadLength { .. })));
        let bytes = data_record(9, 6, b"abcdef");
        assert_eq!(decode(&bytes), Err(DecodeError::BadDirection(9)));
    }

    #[test]
    fn short_and_unknown_records() {
        assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
        let mut bytes = data_record(0, 0, b"");
        bytes[0] = 42;
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownKind(42)));
        // an Accept kind in a record too short for a SocketEvent
        let mut bytes = as_bytes(&EventHeader {
            kind: EventKind::Accept as u32,
            ..Default::default()
        });
        bytes.extend_from_slice(&[0; 8]);
        assert!(matches!(decode(&bytes), Err(DecodeError::Short(_))));
    }

    #[test]
    fn socket_records_decode_addresses() {
        let mut ev = SocketEvent::default();
        ev.header.kind = EventKind::Addresses as u32;
        ev.header.pid = 10;
        ev.header.fd = 4;
        ev.role = ROLE_SERVER;
        ev.family = AF_INET6;
        ev.local_port = 8080;
        ev.remote_port = 50000;
        // IPv4-mapped ::ffff:127.0.0.1 becomes plain IPv4
        ev.local_addr = Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
        ev.remote_addr = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        ev.comm[..5].copy_from_slice(b"nginx");
        let Event::Addresses(info) = decode(&as_bytes(&ev)).unwrap() else {
            panic!("not addresses")
        };
        assert_eq!(info.local, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(info.remote, Some("[fd00::2]:50000".parse().unwrap()));
        assert_eq!(info.role, Some(Role::Server));
        assert_eq!(info.comm, "nginx");

        ev.header.kind = EventKind::Accept as u32;
        ev.family = 0;
        let Event::Accept(info) = decode(&as_bytes(&ev)).unwrap() else {
            panic!("not accept")
        };
        assert_eq!((info.local, info.remote), (None, None));
    }
}
