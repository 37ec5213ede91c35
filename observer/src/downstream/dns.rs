//! DNS over UDP (one message per segment) and over TCP (2-byte length prefix).
//!
//! What counts as a call: a query (QR 0) answered by a response (QR 1) with the same
//! (id, first question name, first question type). The operation is the query type
//! (`A`, `AAAA`, .., `TYPE<n>`), `dns_name` the first question's name, `answers` the
//! addresses of the A/AAAA records of the answer section (no other answer data is kept:
//! CNAME targets, TXT, MX are skipped). rcode 3 → `NotFound`, any other nonzero rcode →
//! `Server`. Queries never answered stay pending (at most 64, the oldest dropped and
//! counted `Skip::Unmatched`); a response without its query is `Skip::Unmatched`.
//!
//! Names: lower case, no trailing dot (the root is `.`), label bytes other than
//! `[a-z0-9_-]` written `\DDD` (decimal, as in zone files), cut to `MAX_DNS_NAME` bytes.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::framing::{Framer, Frames, Msg};
use super::{Call, ErrorClass, Output, Parser, Protocol, Segment, Skip, MAX_DNS_NAME};
use crate::http::Side;

/// Most queries waiting for their response.
const MAX_PENDING: usize = 64;
/// Most addresses kept per response.
const MAX_ANSWERS: usize = 32;
/// Most compression pointers followed in one name.
const MAX_JUMPS: usize = 32;

/// A parsed message: header and first question.
struct Message {
    id: u16,
    response: bool,
    opcode: u8,
    rcode: u8,
    qdcount: u16,
    ancount: u16,
    /// First question: name and type.
    question: Option<(String, u16)>,
    /// Offset just past the question section (when parsed).
    end_of_questions: usize,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|x| u16::from_be_bytes([x[0], x[1]]))
}

/// Reads the name at `pos`: its presentation (lower case, escaped) and the offset just
/// past it in place (compression pointers followed, at most `MAX_JUMPS`).
fn read_name(msg: &[u8], mut pos: usize) -> Result<(String, usize), Skip> {
    let mut name = String::new();
    let mut end = None;
    let mut jumps = 0;
    let mut wire_len = 0usize;
    loop {
        let len = *msg.get(pos).ok_or(Skip::Truncated)?;
        match len & 0xc0 {
            0xc0 => {
                let lo = *msg.get(pos + 1).ok_or(Skip::Truncated)?;
                end.get_or_insert(pos + 2);
                jumps += 1;
                if jumps > MAX_JUMPS {
                    return Err(Skip::Malformed);
                }
                pos = ((len as usize & 0x3f) << 8) | lo as usize;
            }
            0x00 => {
                if len == 0 {
                    let end = end.unwrap_or(pos + 1);
                    if name.is_empty() {
                        name.push('.');
                    }
                    return Ok((name, end));
                }
                let label = msg
                    .get(pos + 1..pos + 1 + len as usize)
                    .ok_or(Skip::Truncated)?;
                wire_len += 1 + label.len();
                if wire_len > 255 {
                    return Err(Skip::Malformed);
                }
                if !name.is_empty() {
                    name.push('.');
                }
                for &b in label {
                    let b = b.to_ascii_lowercase();
                    if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' {
                        name.push(b as char);
                    } else {
                        name.push_str(&format!("\\{b:03}"));
                    }
                }
                pos += 1 + len as usize;
            }
            _ => return Err(Skip::Malformed),
        }
    }
}

fn cut_name(mut name: String) -> String {
    if name.len() > MAX_DNS_NAME {
        let mut end = MAX_DNS_NAME;
        // Not in the middle of a `\DDD` escape.
        if let Some(bs) = name[end.saturating_sub(3)..end].rfind('\\') {
            end = end - 3 + bs;
        }
        name.truncate(end);
    }
    name
}

fn parse(msg: &[u8]) -> Result<Message, Skip> {
    if msg.len() < 12 {
        return Err(Skip::Truncated);
    }
    let flags = be16(msg, 2).unwrap_or(0);
    let mut m = Message {
        id: be16(msg, 0).unwrap_or(0),
        response: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0xf) as u8,
        rcode: (flags & 0xf) as u8,
        qdcount: be16(msg, 4).unwrap_or(0),
        ancount: be16(msg, 6).unwrap_or(0),
        question: None,
        end_of_questions: 12,
    };
    let mut pos = 12;
    for i in 0..m.qdcount {
        let (name, end) = read_name(msg, pos)?;
        let qtype = be16(msg, end).ok_or(Skip::Truncated)?;
        be16(msg, end + 2).ok_or(Skip::Truncated)?;
        if i == 0 {
            m.question = Some((cut_name(name), qtype));
        }
        pos = end + 4;
    }
    m.end_of_questions = pos;
    Ok(m)
}

/// The A/AAAA addresses of the answer section (what could be read of it).
fn answers(msg: &[u8], m: &Message) -> Result<Vec<IpAddr>, Skip> {
    let mut out = Vec::new();
    let mut pos = m.end_of_questions;
    for _ in 0..m.ancount {
        let (_, end) = read_name(msg, pos)?;
        let rtype = be16(msg, end).ok_or(Skip::Truncated)?;
        let class = be16(msg, end + 2).ok_or(Skip::Truncated)?;
        let rdlen = be16(msg, end + 8).ok_or(Skip::Truncated)? as usize;
        let rdata = msg.get(end + 10..end + 10 + rdlen).ok_or(Skip::Truncated)?;
        if class == 1 && out.len() < MAX_ANSWERS {
            match (rtype, rdata.len()) {
                (1, 4) => out.push(IpAddr::V4(Ipv4Addr::new(
                    rdata[0], rdata[1], rdata[2], rdata[3],
                ))),
                (28, 16) => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(rdata);
                    out.push(IpAddr::V6(Ipv6Addr::from(a)));
                }
                _ => {}
            }
        }
        pos = end + 10 + rdlen;
    }
    Ok(out)
}

fn qtype_name(t: u16) -> String {
    match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        _ => return format!("TYPE{t}"),
    }
    .to_string()
}

/// A standard query with one to four questions, no answer, and a readable first
/// question.
pub fn looks_like_query(b: &[u8]) -> bool {
    match parse(b) {
        Ok(m) => {
            !m.response
                && m.opcode == 0
                && (1..=4).contains(&m.qdcount)
                && m.ancount == 0
                && m.question.is_some()
        }
        // The first question read but a later one cut by the capture.
        Err(_) => false,
    }
}

/// A 2-byte length, then a query as for [`looks_like_query`].
pub fn looks_like_tcp_query(b: &[u8]) -> bool {
    let Some(len) = be16(b, 0) else {
        return false;
    };
    let end = (2 + len as usize).min(b.len());
    len >= 12 && looks_like_query(&b[2..end])
}

struct Pending {
    id: u16,
    name: String,
    qtype: u16,
    started_ns: u64,
}

#[derive(Default)]
struct State {
    pending: VecDeque<Pending>,
}

impl State {
    /// One whole message (`cut`: the capture ended inside it).
    fn message(
        &mut self,
        side: Side,
        msg: &[u8],
        cut: bool,
        ts: u64,
        start: u64,
        out: &mut Output,
    ) {
        let m = match parse(msg) {
            Ok(m) => m,
            Err(skip) => {
                if !cut || skip != Skip::Truncated {
                    out.skips.push(skip);
                }
                return;
            }
        };
        match side {
            Side::Client => {
                let Some((name, qtype)) = m.question.filter(|_| !m.response) else {
                    out.skips.push(Skip::Malformed);
                    return;
                };
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                    out.skips.push(Skip::Unmatched);
                }
                self.pending.push_back(Pending {
                    id: m.id,
                    name,
                    qtype,
                    started_ns: start,
                });
            }
            Side::Server => {
                if !m.response {
                    out.skips.push(Skip::Malformed);
                    return;
                }
                let at = self.pending.iter().position(|p| {
                    p.id == m.id
                        && m.question
                            .as_ref()
                            .is_none_or(|(n, t)| *n == p.name && *t == p.qtype)
                });
                let Some(p) = at.and_then(|at| self.pending.remove(at)) else {
                    out.skips.push(Skip::Unmatched);
                    return;
                };
                let answers = match answers(msg, &m) {
                    Ok(a) => a,
                    Err(skip) => {
                        if !cut || skip != Skip::Truncated {
                            out.skips.push(skip);
                        }
                        Vec::new()
                    }
                };
                out.calls.push(Call {
                    protocol: Protocol::Dns,
                    operation: qtype_name(p.qtype),
                    fingerprint: None,
                    dns_name: Some(p.name),
                    answers,
                    started_ns: p.started_ns,
                    ended_ns: ts,
                    error: match m.rcode {
                        0 => None,
                        3 => Some(ErrorClass::NotFound),
                        _ => Some(ErrorClass::Server),
                    },
                });
            }
        }
    }
}

impl Frames for State {
    fn header_len(&self, _side: Side) -> usize {
        2
    }

    fn header(&self, _side: Side, hdr: &[u8]) -> Option<(u64, usize)> {
        let len = u16::from_be_bytes([hdr[0], hdr[1]]);
        Some((len as u64, len as usize))
    }

    fn plausible(&self, _side: Side, hdr: &[u8]) -> bool {
        u16::from_be_bytes([hdr[0], hdr[1]]) >= 12
    }

    fn message(&mut self, side: Side, msg: Msg<'_>, out: &mut Output) {
        let cut = (msg.body.len() as u64) < msg.body_len;
        State::message(self, side, msg.body, cut, msg.ts_ns, msg.start_ns, out);
    }

    fn lost(&mut self, _side: Side) {}

    fn stopped(&self) -> bool {
        false
    }
}

pub struct DnsParser {
    datagram: bool,
    client: Framer,
    server: Framer,
    st: State,
}

impl DnsParser {
    pub fn new(datagram: bool) -> Self {
        Self {
            datagram,
            client: Framer::default(),
            server: Framer::default(),
            st: State::default(),
        }
    }
}

impl Parser for DnsParser {
    fn protocol(&self) -> Protocol {
        Protocol::Dns
    }

    fn feed(&mut self, side: Side, segment: Segment<'_>, out: &mut Output) {
        if !self.datagram {
            match side {
                Side::Client => self.client.feed(&mut self.st, side, segment, out),
                Side::Server => self.server.feed(&mut self.st, side, segment, out),
            }
            return;
        }
        if segment.lost_before > 0 {
            out.skips.push(Skip::Lost);
        }
        let cut = segment.len > segment.data.len() as u64;
        if cut {
            out.skips.push(Skip::Truncated);
        }
        let ts = segment.ts_ns;
        self.st.message(side, segment.data, cut, ts, ts, out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::postgres::tests::{check_garbage, check_splits, run};
    use super::*;

    /// `api.Example.com` as labels.
    const NAME: &[u8] = b"\x03api\x07Example\x03com\x00";

    fn query(id: u16, qtype: u16) -> Vec<u8> {
        let mut v = id.to_be_bytes().to_vec();
        v.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
        v.extend_from_slice(NAME);
        v.extend_from_slice(&qtype.to_be_bytes());
        v.extend_from_slice(&[0, 1]);
        // OPT record (EDNS0, 1232 bytes).
        v.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        v
    }

    /// Response: CNAME to `canary-host.example.net`, then the addresses.
    fn response(id: u16, qtype: u16, rcode: u8) -> Vec<u8> {
        let addrs: Vec<Vec<u8>> = match qtype {
            1 => vec![vec![93, 184, 216, 34], vec![10, 0, 0, 1]],
            28 => vec![vec![
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
            ]],
            _ => vec![],
        };
        let mut v = id.to_be_bytes().to_vec();
        v.extend_from_slice(&[
            0x81,
            0x80 | rcode,
            0,
            1,
            0,
            1 + addrs.len() as u8 + 1,
            0,
            0,
            0,
            0,
        ]);
        v.extend_from_slice(NAME);
        v.extend_from_slice(&qtype.to_be_bytes());
        v.extend_from_slice(&[0, 1]);
        // CNAME at offset 12 (pointer c0 0c) → canary-host.example.net, at `cname_at`.
        let target = b"\x0bcanary-host\x07example\x03net\x00";
        v.extend_from_slice(&[
            0xc0,
            0x0c,
            0,
            5,
            0,
            1,
            0,
            0,
            0x0e,
            0x10,
            0,
            target.len() as u8,
        ]);
        let cname_at = v.len() as u8;
        v.extend_from_slice(target);
        // A TXT record of the target: never kept.
        v.extend_from_slice(&[0xc0, cname_at, 0, 16, 0, 1, 0, 0, 0, 60, 0, 17, 16]);
        v.extend_from_slice(b"canary-secret-42");
        for a in &addrs {
            v.extend_from_slice(&[
                0xc0,
                cname_at,
                0,
                qtype as u8,
                0,
                1,
                0,
                0,
                0,
                60,
                0,
                a.len() as u8,
            ]);
            v.extend_from_slice(a);
        }
        v
    }

    fn tcp(msg: &[u8]) -> Vec<u8> {
        let mut v = (msg.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(msg);
        v
    }

    fn udp() -> Box<dyn Parser> {
        Box::new(DnsParser::new(true))
    }

    fn tcp_parser() -> Box<dyn Parser> {
        Box::new(DnsParser::new(false))
    }

    #[test]
    fn detection() {
        assert!(looks_like_query(&query(1, 1)));
        assert!(!looks_like_query(&response(1, 1, 0)));
        assert!(!looks_like_query(&query(1, 1)[..20]));
        assert!(looks_like_tcp_query(&tcp(&query(1, 28))));
        assert!(!looks_like_tcp_query(b"GET / HTTP/1.1\r\n\r\n"));
    }

    #[test]
    fn udp_a_and_aaaa() {
        let segs = vec![
            (Side::Client, 1, query(0xbeef, 1)),
            (Side::Client, 2, query(0xbef0, 28)),
            (Side::Server, 3, response(0xbef0, 28, 0)),
            (Side::Server, 4, response(0xbeef, 1, 0)),
        ];
        let out = run(&mut *udp(), &segs);
        assert_eq!(out.skips, vec![]);
        assert_eq!(out.calls.len(), 2);
        let aaaa = &out.calls[0];
        assert_eq!(aaaa.operation, "AAAA");
        assert_eq!(aaaa.dns_name.as_deref(), Some("api.example.com"));
        assert_eq!(aaaa.answers, vec!["2001:db8::1".parse::<IpAddr>().unwrap()]);
        assert_eq!((aaaa.started_ns, aaaa.ended_ns), (2, 3));
        let a = &out.calls[1];
        assert_eq!(a.operation, "A");
        assert_eq!(
            a.answers,
            vec![
                "93.184.216.34".parse::<IpAddr>().unwrap(),
                "10.0.0.1".parse().unwrap()
            ]
        );
        assert_eq!((a.started_ns, a.ended_ns, a.error), (1, 4, None));
        assert!(a.fingerprint.is_none());
        check_garbage(&udp, &segs, &["canary"]);
    }

    #[test]
    fn errors_and_unmatched() {
        let segs = vec![
            (Side::Client, 1, query(7, 33)),
            (Side::Server, 2, response(7, 33, 3)),
            (Side::Client, 3, query(8, 1)),
            (Side::Server, 4, response(8, 1, 2)),
            (Side::Server, 5, response(9, 1, 0)),
            (Side::Client, 6, query(10, 99)),
            // Same id, other type: not its answer.
            (Side::Server, 7, response(10, 1, 0)),
        ];
        let out = run(&mut *udp(), &segs);
        let got: Vec<_> = out
            .calls
            .iter()
            .map(|c| (c.operation.as_str(), c.error))
            .collect();
        assert_eq!(
            got,
            vec![
                ("SRV", Some(ErrorClass::NotFound)),
                ("A", Some(ErrorClass::Server))
            ]
        );
        assert_eq!(out.skips, vec![Skip::Unmatched, Skip::Unmatched]);
    }

    #[test]
    fn bad_messages() {
        let mut out = Output::default();
        let mut p = udp();
        let seg = |data: &[u8], out: &mut Output, p: &mut Box<dyn Parser>| {
            p.feed(
                Side::Client,
                Segment {
                    ts_ns: 1,
                    data,
                    len: data.len() as u64,
                    lost_before: 0,
                },
                out,
            )
        };
        seg(&query(1, 1)[..10], &mut out, &mut p);
        seg(&query(1, 1)[..20], &mut out, &mut p);
        // A pointer to itself.
        let mut lp = query(1, 1)[..12].to_vec();
        lp.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        seg(&lp, &mut out, &mut p);
        // An extended label type.
        let mut ext = query(1, 1)[..12].to_vec();
        ext.extend_from_slice(&[0x41, 0, 0, 1, 0, 1]);
        seg(&ext, &mut out, &mut p);
        assert_eq!(
            out.skips,
            vec![
                Skip::Truncated,
                Skip::Truncated,
                Skip::Malformed,
                Skip::Malformed
            ]
        );
        // Overflowing pending queries.
        let mut out = Output::default();
        for i in 0..70 {
            seg(&query(i, 1), &mut out, &mut p);
        }
        assert_eq!(out.skips.len(), 6);
        assert!(out.skips.iter().all(|s| *s == Skip::Unmatched));
    }

    #[test]
    fn names() {
        let mut q = query(1, 12)[..12].to_vec();
        q.extend_from_slice(b"\x04A.b\xff\x02_x\x00\x00\x0c\x00\x01");
        let m = parse(&q).unwrap();
        assert_eq!(m.question, Some(("a\\046b\\255._x".to_string(), 12)));
        let mut q = query(1, 1)[..12].to_vec();
        for _ in 0..4 {
            q.push(63);
            q.extend_from_slice(&[b'.'; 63]);
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse(&q).err(), Some(Skip::Malformed));
        let mut q = query(1, 1)[..12].to_vec();
        for _ in 0..3 {
            q.push(60);
            q.extend_from_slice(&[b'.'; 60]);
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let name = parse(&q).unwrap().question.unwrap().0;
        assert!(name.len() <= MAX_DNS_NAME && name.ends_with("046"));
        let mut q = query(1, 2)[..12].to_vec();
        q.extend_from_slice(&[0, 0, 2, 0, 1]);
        assert_eq!(parse(&q).unwrap().question, Some((".".to_string(), 2)));
    }

    #[test]
    fn tcp_pipelined() {
        let mut qs = tcp(&query(1, 1));
        qs.extend(tcp(&query(2, 28)));
        let mut rs = tcp(&response(1, 1, 0));
        rs.extend(tcp(&response(2, 28, 0)));
        let segs = vec![(Side::Client, 1, qs), (Side::Server, 2, rs)];
        let out = run(&mut *tcp_parser(), &segs);
        assert_eq!(out.skips, vec![]);
        let got: Vec<_> = out
            .calls
            .iter()
            .map(|c| (c.operation.as_str(), c.answers.len()))
            .collect();
        assert_eq!(got, vec![("A", 2), ("AAAA", 1)]);
        check_splits(&tcp_parser, &segs);
        check_garbage(&tcp_parser, &segs, &["canary"]);
    }
}
