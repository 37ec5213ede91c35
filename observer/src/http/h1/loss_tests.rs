//! Lost records on a keep-alive connection: the kernel's byte counts (`Segment::at`,
//! `lost_before`) keep every later request paired with its own response.

use std::sync::Arc;

use super::Http1Parser;
use crate::http::{
    HeaderAllowlist, Offsets, ParseIssue, ParserLimits, ParserOutput, Segment, Side, StreamParser,
};

/// Both directions of one connection as the kernel counts them: every call moves the
/// counts, and only the calls that are not lost reach the parser, stamped as the
/// connection stage stamps them.
struct Wire {
    parser: Http1Parser,
    /// Bytes each side sent (client, server), lost or not.
    sent: [u64; 2],
    /// Where each side's next record is expected.
    seen: [u64; 2],
    ts: u64,
    out: ParserOutput,
}

fn index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

impl Wire {
    fn new() -> Self {
        Self {
            parser: Http1Parser::new(
                ParserLimits::default(),
                Arc::new(HeaderAllowlist::default()),
            ),
            sent: [0; 2],
            seen: [0; 2],
            ts: 0,
            out: ParserOutput::default(),
        }
    }

    fn send(&mut self, side: Side, bytes: &[u8], lost: bool) {
        let i = index(side);
        let at = Offsets {
            own: self.sent[i],
            peer: self.sent[1 - i],
        };
        self.sent[i] += bytes.len() as u64;
        self.ts += 1;
        if lost {
            return;
        }
        let lost_before = at.own - self.seen[i];
        self.seen[i] = at.own + bytes.len() as u64;
        let segment = Segment {
            ts_ns: self.ts,
            data: bytes,
            len: bytes.len() as u64,
            at: Some(at),
            lost_before,
        };
        self.parser.feed(side, segment, &mut self.out);
    }

    /// (target, status) of what was paired.
    fn pairs(&self) -> Vec<(String, u16)> {
        self.out
            .exchanges
            .iter()
            .map(|e| (e.target.clone(), e.status))
            .collect()
    }
}

fn request(i: usize) -> Vec<u8> {
    format!("GET /r/{i} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer t{i}\r\n\r\n").into_bytes()
}

/// A response whose status tells which request it answers.
fn response(i: usize, body: usize) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {} OK\r\nContent-Length: {body}\r\n\r\n",
        status_of(i)
    )
    .into_bytes();
    r.resize(r.len() + body, b'x');
    r
}

fn status_of(i: usize) -> u16 {
    200 + (i % 100) as u16
}

fn pair(i: usize) -> (String, u16) {
    (format!("/r/{i}"), status_of(i))
}

#[test]
fn a_lost_response_costs_its_exchange_only() {
    let mut w = Wire::new();
    for i in 0..5 {
        w.send(Side::Client, &request(i), false);
        w.send(Side::Server, &response(i, 3), i == 1);
    }
    assert_eq!(w.pairs(), [0, 2, 3, 4].map(pair));
    assert_eq!(w.out.lost_exchanges, 1);
    assert!(
        !w.out.issues.contains(&ParseIssue::UnpairedResponse),
        "{:?}",
        w.out.issues
    );
}

#[test]
fn several_lost_responses_in_a_row() {
    let mut w = Wire::new();
    for i in 0..6 {
        w.send(Side::Client, &request(i), false);
        w.send(Side::Server, &response(i, 0), (1..=3).contains(&i));
    }
    assert_eq!(w.pairs(), [0, 4, 5].map(pair));
    assert_eq!(w.out.lost_exchanges, 3);
}

#[test]
fn a_lost_request_costs_its_exchange_only() {
    let mut w = Wire::new();
    for i in 0..5 {
        w.send(Side::Client, &request(i), i == 2);
        w.send(Side::Server, &response(i, 3), false);
    }
    assert_eq!(w.pairs(), [0, 1, 3, 4].map(pair));
    assert_eq!(w.out.lost_exchanges, 1);
    assert!(
        !w.out.issues.contains(&ParseIssue::UnpairedResponse),
        "{:?}",
        w.out.issues
    );
}

#[test]
fn a_lost_response_head_with_its_body_arriving() {
    let mut w = Wire::new();
    for i in 0..4 {
        w.send(Side::Client, &request(i), false);
        let r = response(i, 5000);
        let (head, body) = r.split_at(r.len() - 5000);
        w.send(Side::Server, head, i == 1);
        w.send(Side::Server, &body[..2500], false);
        w.send(Side::Server, &body[2500..], false);
    }
    assert_eq!(w.pairs(), [0, 2, 3].map(pair));
    assert_eq!(w.out.lost_exchanges, 1);
}

#[test]
fn a_lost_body_record_loses_no_exchange() {
    let mut w = Wire::new();
    for i in 0..4 {
        w.send(Side::Client, &request(i), false);
        let r = response(i, 9000);
        let (head, body) = r.split_at(r.len() - 9000);
        w.send(Side::Server, head, false);
        for (k, part) in body.chunks(3000).enumerate() {
            // The last body record of every response, and a middle one of the first.
            w.send(Side::Server, part, k == 2 || (i == 0 && k == 1));
        }
    }
    assert_eq!(w.pairs(), [0, 1, 2, 3].map(pair));
    assert_eq!(w.out.lost_exchanges, 0);
    assert!(w.out.issues.is_empty(), "{:?}", w.out.issues);
}

#[test]
fn pipelined_requests_are_never_paired_wrong() {
    // Three requests at once, the first answer lost: which answers follow cannot be told
    // apart by counts, so they are dropped rather than guessed.
    let mut w = Wire::new();
    let all: Vec<u8> = (0..3).flat_map(request).collect();
    w.send(Side::Client, &all, false);
    for i in 0..3 {
        w.send(Side::Server, &response(i, 1), i == 0);
    }
    // Then the connection goes on, one request at a time.
    for i in 3..5 {
        w.send(Side::Client, &request(i), false);
        w.send(Side::Server, &response(i, 1), false);
    }
    for p in w.pairs() {
        let i: usize = p.0.trim_start_matches("/r/").parse().unwrap();
        assert_eq!(p, pair(i), "paired wrong");
    }
    assert_eq!(&w.pairs()[w.pairs().len() - 2..], [3, 4].map(pair));
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// One message cut into records at random points; the first holds at least 8 bytes (a
/// side that lost sync resumes at a record that starts a message and shows enough of it
/// to tell: a method and a space, or `HTTP/`).
fn records(rng: &mut Rng, message: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = message;
    while !rest.is_empty() {
        let least = if out.is_empty() { 8.min(rest.len()) } else { 1 };
        let n = if rng.below(3) == 0 {
            (1 + rng.below(rest.len() as u64) as usize).max(least)
        } else {
            rest.len()
        };
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}

fn chunked_response(i: usize, sizes: &[usize]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {} OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        status_of(i)
    )
    .into_bytes();
    for &n in sizes {
        r.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        r.resize(r.len() + n, b'x');
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

fn post(i: usize, body: usize) -> Vec<u8> {
    let mut r =
        format!("POST /r/{i} HTTP/1.1\r\nHost: api\r\nContent-Length: {body}\r\n\r\n").into_bytes();
    r.resize(r.len() + body, b'y');
    r
}

/// Thousands of keep-alive exchanges, one request at a time, bodies of every kind cut
/// into records at random, one record in ten lost: every exchange whose records all
/// arrived is reported, and every reported exchange is paired right.
#[test]
fn random_losses_never_shift_the_pairing() {
    for seed in 1..=100u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut w = Wire::new();
        let mut intact = Vec::new();
        let n = 300;
        for i in 0..n {
            let req = match rng.below(3) {
                0 => post(i, 1 + rng.below(20_000) as usize),
                _ => request(i),
            };
            let resp = match rng.below(3) {
                0 => chunked_response(i, &[1 + rng.below(9000) as usize, 7]),
                _ => response(i, rng.below(12_000) as usize),
            };
            let mut whole = true;
            for (side, message) in [(Side::Client, &req), (Side::Server, &resp)] {
                for record in records(&mut rng, message) {
                    let lost = rng.below(10) == 0;
                    whole &= !lost;
                    w.send(side, &record, lost);
                }
            }
            if whole {
                intact.push(pair(i));
            }
        }
        let pairs = w.pairs();
        for p in &pairs {
            let i: usize = p.0.trim_start_matches("/r/").parse().unwrap();
            assert_eq!(*p, pair(i), "seed {seed}: paired wrong");
        }
        for p in &intact {
            assert!(
                pairs.contains(p),
                "seed {seed}: {p:?} arrived whole, not reported"
            );
        }
        assert!(
            pairs.len() + w.out.lost_exchanges as usize <= n,
            "seed {seed}"
        );
    }
}

/// Long bodies of known length are announced (as the stream offset they end at) so that
/// the kernel can count them without copying; the bytes it skips come as a gap, which the
/// body absorbs, and the next exchange pairs as usual.
#[test]
fn long_bodies_are_left_to_the_kernel_to_count() {
    let mut w = Wire::new();
    let big = response(0, 100_000);
    let head_len = big.len() - 100_000;
    w.send(Side::Client, &request(0), false);
    w.send(Side::Server, &big[..head_len + 1000], false);
    let server_start = w.sent[1] - (head_len as u64 + 1000);
    assert_eq!(
        w.out.skips,
        [(Side::Server, server_start + big.len() as u64)]
    );
    // The kernel counts the rest without sending it; the next answer comes after it.
    w.send(Side::Server, &big[head_len + 1000..], true);
    w.send(Side::Client, &request(1), false);
    w.send(Side::Server, &response(1, 10), false);
    assert_eq!(w.pairs(), [0, 1].map(pair));
    assert_eq!(w.out.lost_exchanges, 0);
    assert!(w.out.issues.is_empty(), "{:?}", w.out.issues);

    // A chunk of known size, and a request body: likewise. Short ones are not worth it.
    let mut w = Wire::new();
    let mut post = post(2, 50_000);
    post.truncate(post.len() - 50_000 + 10);
    w.send(Side::Client, &post, false);
    let request_body_end = w.sent[0] - 10 + 50_000;
    w.send(Side::Client, &[b'y'; 49_990], true);
    w.send(Side::Server, &chunked_response(2, &[40_000, 7]), false);
    let chunk_start = w.sent[1] - chunked_response(2, &[40_000, 7]).len() as u64
        + "HTTP/1.1 202 OK\r\nTransfer-Encoding: chunked\r\n\r\n".len() as u64
        + "9c40\r\n".len() as u64;
    assert_eq!(
        w.out.skips,
        [
            (Side::Client, request_body_end),
            (Side::Server, chunk_start + 40_000)
        ]
    );
    assert_eq!(w.pairs(), [pair(2)]);
}
