//! Property tests of the HTTP/1 parser: arbitrary bytes never break its invariants, and
//! valid traffic yields the same exchanges however it is split into segments.
//!
//! Case counts are small so the module runs in a few seconds in a debug build; failures
//! are not persisted to files.

use proptest::prelude::*;
use proptest::sample::{select, Index};

use super::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Every tchar (RFC 9110 §5.6.2).
const TCHARS: &[u8] =
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Bytes of path segments and queries.
const PATH_CHARS: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=:@";

/// Bytes of header values (no spaces at either end, so none are trimmed).
const VALUE_CHARS: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/=;:,+\"()";

/// Pieces that steer the parser into its states, mixed with random bytes in
/// [`arbitrary_segments_keep_invariants`].
const PIECES: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"PURGE /x HTTP/1.1\r\n\r\n",
    b"\r\n\r\nM-SEARCH * HTTP/1.1\r\nMAN: \"ssdp:discover\"\r\n\r\n",
    b"POST /p HTTP/1.1\r\nContent-Length: 10\r\n\r\n",
    b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HEAD /h HTTP/1.0\r\n\r\n",
    b"CONNECT x:1 HTTP/1.1\r\n\r\n",
    b"GET /u HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
    b"GET /w HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
    b"OPTIONS rtsp://h/x RTSP/1.0\r\nCSeq: 1\r\n\r\n",
    b"GET /\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffff\r\n",
    b"\r\n",
    b"Content-Length: 99999999999999999999999\r\n",
];

/// One segment of the arbitrary-bytes property.
#[derive(Clone, Debug)]
struct RawSegment {
    side: Side,
    data: Vec<u8>,
    /// Bytes transferred but not captured, after `data`.
    gap: u64,
    /// The connection closes (and the parser is reused) after this segment.
    finish: bool,
}

fn raw_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..48),
        8 => select(PIECES).prop_map(<[u8]>::to_vec),
        2 => (select(PIECES), any::<Index>())
            .prop_map(|(p, cut)| p[..cut.index(p.len() + 1)].to_vec()),
        // Beyond `max_head_bytes` (256) as a head, a chunk line or trailers.
        1 => (1usize..400).prop_map(|n| {
            let mut v = b"X-Pad: ".to_vec();
            v.resize(n, b'a');
            v.extend_from_slice(b"\r\n");
            v
        }),
    ]
}

fn raw_segment() -> impl Strategy<Value = RawSegment> {
    (
        any::<bool>(),
        prop::collection::vec(raw_piece(), 0..5),
        prop_oneof![4 => Just(0u64), 1 => 1u64..100_000],
        prop::bool::weighted(0.06),
    )
        .prop_map(|(client, pieces, gap, finish)| RawSegment {
            side: if client { Side::Client } else { Side::Server },
            data: pieces.concat(),
            gap,
            finish,
        })
}

/// Occurrences of `needle` in `hay`.
fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// A body as generated.
#[derive(Clone, Debug)]
enum Body {
    None,
    Length(usize),
    /// Sizes of the chunks before the last (empty) one; each > 0.
    Chunked(Vec<usize>),
}

impl Body {
    fn total(&self) -> usize {
        match self {
            Body::None => 0,
            Body::Length(n) => *n,
            Body::Chunked(sizes) => sizes.iter().sum(),
        }
    }
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        Just(Body::None),
        (0usize..300).prop_map(Body::Length),
        prop::collection::vec(1usize..100, 0..4).prop_map(Body::Chunked),
    ]
}

/// One generated request and its response.
#[derive(Clone, Debug)]
struct Message {
    blank_before: bool,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    request_body: Body,
    /// A 100 Continue precedes the final response.
    interim: bool,
    status: u16,
    response_body: Body,
}

fn token(chars: &'static [u8], len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(select(chars), len).prop_map(|b| String::from_utf8(b).expect("ASCII"))
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        select(
            &["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PURGE", "M-SEARCH"][..]
        )
        .prop_map(str::to_owned),
        token(TCHARS, 1..12),
    ]
    // CONNECT changes the connection; PRI is not an HTTP/1 method.
    .prop_filter("tunnel or preface", |m| m != "CONNECT" && m != "PRI")
}

fn target() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(token(PATH_CHARS, 0..8), 0..4),
        prop::option::of(token(PATH_CHARS, 0..12)),
        any::<bool>(),
    )
        .prop_map(|(segments, query, absolute)| {
            let mut t = String::new();
            if absolute {
                t.push_str("http://api.example");
            }
            t.push('/');
            t.push_str(&segments.join("/"));
            if let Some(q) = query {
                t.push('?');
                t.push_str(&q);
            }
            t
        })
}

fn header() -> impl Strategy<Value = (String, String)> {
    (
        select(
            &[
                "Host",
                "host",
                "User-Agent",
                "Accept",
                "Cookie",
                "X-Api-Key",
                "X-Trace-Id",
                "AUTHORIZATION",
                "Content-Type",
                "Via",
            ][..],
        ),
        token(VALUE_CHARS, 1..20),
    )
        .prop_map(|(n, v)| (n.to_owned(), v))
}

fn message() -> impl Strategy<Value = Message> {
    (
        (any::<bool>(), method(), target()),
        prop::collection::vec(header(), 0..6),
        body(),
        (
            any::<bool>(),
            select(&[200u16, 201, 204, 299, 301, 304, 404, 418, 500, 503][..]),
            body(),
        ),
    )
        .prop_map(
            |(
                (blank_before, method, target),
                headers,
                request_body,
                (interim, status, response_body),
            )| {
                Message {
                    blank_before,
                    method,
                    target,
                    headers,
                    request_body,
                    interim,
                    status,
                    // A response without framing would run to the close.
                    response_body: match response_body {
                        Body::None => Body::Length(0),
                        framed => framed,
                    },
                }
            },
        )
}

impl Message {
    /// The response has no body whatever its headers say.
    fn response_without_body(&self) -> bool {
        self.method == "HEAD" || self.status == 204 || self.status == 304
    }

    /// What the parser should report for this message (timestamps aside).
    fn expected(&self, allowlist: &HeaderAllowlist) -> Expected {
        Expected {
            method: self.method.clone(),
            target: self.target.clone(),
            status: self.status,
            headers: self
                .headers
                .iter()
                .filter(|(n, _)| allowlist.allows(n))
                .map(|(n, v)| Header {
                    name: n.to_ascii_lowercase(),
                    value: v.clone(),
                })
                .collect(),
            request_body_bytes: self.request_body.total() as u64,
            response_body_bytes: match &self.response_body {
                _ if self.response_without_body() => Some(0),
                Body::None | Body::Length(_) => Some(self.response_body.total() as u64),
                Body::Chunked(_) => None,
            },
        }
    }
}

/// The parts of an exchange a property compares.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expected {
    method: String,
    target: String,
    status: u16,
    headers: Vec<Header>,
    request_body_bytes: u64,
    response_body_bytes: Option<u64>,
}

fn observed(e: &ParsedExchange) -> Expected {
    assert_eq!(e.protocol, Protocol::Http1);
    assert_eq!(e.minor_version, 1);
    assert!(e.grpc.is_none());
    assert!(e.request_start_ns <= e.request_end_ns && e.request_end_ns <= e.response_ns);
    Expected {
        method: e.method.clone(),
        target: e.target.clone(),
        status: e.status,
        headers: e.request_headers.clone(),
        request_body_bytes: e.request_body_bytes,
        response_body_bytes: e.response_body_bytes,
    }
}

/// One direction's bytes, with where messages end and which ranges are body data.
#[derive(Default)]
struct Stream {
    bytes: Vec<u8>,
    /// Per message: offset just after it (client: the whole request; server: the final
    /// response head).
    marks: Vec<usize>,
    /// Ranges of body data (Content-Length bodies and chunk data): a gap may fall there.
    bodies: Vec<std::ops::Range<usize>>,
}

impl Stream {
    /// Append a body as framed by its headers.
    fn body(&mut self, body: &Body) {
        match body {
            Body::None => {}
            Body::Length(n) => {
                let start = self.bytes.len();
                self.bytes.extend((0..*n).map(|i| b'a' + (i % 26) as u8));
                self.bodies.push(start..self.bytes.len());
            }
            Body::Chunked(sizes) => {
                for (k, size) in sizes.iter().enumerate() {
                    // Extensions on some chunk lines.
                    let ext = if k % 2 == 1 { ";ext=1" } else { "" };
                    self.bytes
                        .extend_from_slice(format!("{size:x}{ext}\r\n").as_bytes());
                    let start = self.bytes.len();
                    // Body bytes that look like a message: they must not be parsed.
                    self.bytes
                        .extend(b"HTTP/1.1 200 OK\r\n".iter().cycle().take(*size).copied());
                    self.bodies.push(start..self.bytes.len());
                    self.bytes.extend_from_slice(b"\r\n");
                }
                self.bytes.extend_from_slice(b"0\r\n");
                if sizes.len() % 2 == 1 {
                    self.bytes.extend_from_slice(b"X-Trailer: t\r\n");
                }
                self.bytes.extend_from_slice(b"\r\n");
            }
        }
    }
}

fn framing_header(body: &Body) -> String {
    match body {
        Body::None => String::new(),
        Body::Length(n) => format!("Content-Length: {n}\r\n"),
        Body::Chunked(_) => "Transfer-Encoding: chunked\r\n".to_owned(),
    }
}

/// The client and server streams of a conversation.
fn streams(messages: &[Message]) -> (Stream, Stream) {
    let mut client = Stream::default();
    let mut server = Stream::default();
    for m in messages {
        if m.blank_before {
            client.bytes.extend_from_slice(b"\r\n");
        }
        let mut head = format!("{} {} HTTP/1.1\r\n", m.method, m.target);
        for (n, v) in &m.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str(&framing_header(&m.request_body));
        head.push_str("\r\n");
        client.bytes.extend_from_slice(head.as_bytes());
        client.body(&m.request_body);
        client.marks.push(client.bytes.len());

        if m.interim {
            server
                .bytes
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let head = format!(
            "HTTP/1.1 {} Status\r\nServer: s\r\n{}\r\n",
            m.status,
            framing_header(&m.response_body)
        );
        server.bytes.extend_from_slice(head.as_bytes());
        server.marks.push(server.bytes.len());
        if !m.response_without_body() {
            server.body(&m.response_body);
        }
    }
    (client, server)
}

/// Cut `len` bytes at the given points: segment ranges, in order.
fn cuts(len: usize, points: &[Index]) -> Vec<std::ops::Range<usize>> {
    let mut at: Vec<usize> = points.iter().map(|p| p.index(len + 1)).collect();
    at.push(0);
    at.push(len);
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| w[0]..w[1]).collect()
}

/// Feed the two streams cut into segments, interleaved by `choices` (true: client first)
/// but never a response head before its whole request; a segment that lies within body
/// data and whose `lossy` choice is set is fed with only its first half captured.
fn run(
    parser: &mut Http1Parser,
    client: &Stream,
    server: &Stream,
    client_cuts: &[std::ops::Range<usize>],
    server_cuts: &[std::ops::Range<usize>],
    choices: &[(bool, bool)],
) -> ParserOutput {
    let mut total = ParserOutput::default();
    let (mut c, mut s) = (0, 0);
    let mut ts = 0u64;
    let mut step = 0;
    while c < client_cuts.len() || s < server_cuts.len() {
        let (prefer_client, lossy) = choices
            .get(step % choices.len().max(1))
            .copied()
            .unwrap_or((true, false));
        step += 1;
        let client_fed = if c == 0 { 0 } else { client_cuts[c - 1].end };
        let server_allowed = s < server_cuts.len() && {
            let end = server_cuts[s].end;
            // Every response head ending in this segment has its request fed.
            server
                .marks
                .iter()
                .zip(&client.marks)
                .all(|(&head_end, &req_end)| head_end > end || req_end <= client_fed)
        };
        let use_client = c < client_cuts.len() && (prefer_client || !server_allowed);
        let (side, stream, range) = if use_client {
            c += 1;
            (Side::Client, client, client_cuts[c - 1].clone())
        } else {
            assert!(server_allowed, "no segment can be fed");
            s += 1;
            (Side::Server, server, server_cuts[s - 1].clone())
        };
        let in_body = stream
            .bodies
            .iter()
            .any(|b| b.start <= range.start && range.end <= b.end);
        let captured = if lossy && in_body {
            range.start..range.start + range.len() / 2
        } else {
            range.clone()
        };
        ts += 1;
        let mut out = ParserOutput::default();
        parser.feed(
            side,
            Segment {
                ts_ns: ts,
                data: &stream.bytes[captured],
                len: range.len() as u64,
                ..Default::default()
            },
            &mut out,
        );
        total.exchanges.extend(out.exchanges);
        total.issues.extend(out.issues);
        assert!(out.h2c.is_none());
    }
    parser.finish(ts + 1, &mut total);
    total
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes, cut anywhere, with gaps, on both sides: no panic, bounded state
    /// and output.
    #[test]
    fn arbitrary_segments_keep_invariants(
        segments in prop::collection::vec(raw_segment(), 1..60),
    ) {
        let limits = ParserLimits {
            max_head_bytes: 256,
            max_headers: 8,
            max_pending: 4,
        };
        let allowlist = Arc::new(HeaderAllowlist::default());
        let mut p = Http1Parser::new(limits.clone(), Arc::clone(&allowlist));
        // Captured bytes of each side since the last finish: every exchange needs a request
        // head and a response head in them, each with its own version string.
        let mut client = Vec::new();
        let mut server = Vec::new();
        let mut exchanges = 0;
        let mut handed_over = false;
        for (ts, seg) in segments.iter().enumerate() {
            let mut out = ParserOutput::default();
            p.feed(
                seg.side,
                Segment {
                    ts_ns: ts as u64,
                    data: &seg.data,
                    len: seg.data.len() as u64 + seg.gap,
                    ..Default::default()
                },
                &mut out,
            );
            match seg.side {
                Side::Client => client.extend_from_slice(&seg.data),
                Side::Server => server.extend_from_slice(&seg.data),
            }
            prop_assert!(p.buffered(Side::Client) <= limits.max_head_bytes);
            prop_assert!(p.buffered(Side::Server) <= limits.max_head_bytes);
            prop_assert!(p.pending.len() <= limits.max_pending);
            if handed_over {
                // After an h2c hand-over the parser stays silent.
                prop_assert!(out.exchanges.is_empty() && out.issues.is_empty());
            }
            if let Some(h2c) = &out.h2c {
                prop_assert!(seg.side == Side::Server);
                prop_assert!(h2c.offset <= seg.data.len());
                // The 101 head ends right before the offset.
                prop_assert!(seg.data[..h2c.offset].ends_with(b"\n"));
                handed_over = true;
            }
            for e in &out.exchanges {
                prop_assert!(e.method.bytes().all(is_tchar) && !e.method.is_empty());
                prop_assert!((100..1000).contains(&e.status));
                prop_assert!(e.minor_version <= 1);
                prop_assert!(e.request_headers.iter().all(|h| allowlist.allows(&h.name)));
            }
            exchanges += out.exchanges.len();
            prop_assert!(exchanges <= count(&client, VERSION_START));
            prop_assert!(exchanges <= count(&server, b"HTTP/1."));
            if seg.finish {
                let mut out = ParserOutput::default();
                p.finish(ts as u64, &mut out);
                prop_assert!(out.exchanges.is_empty() && out.h2c.is_none());
                prop_assert!(p.pending.is_empty());
                prop_assert_eq!(p.buffered(Side::Client) + p.buffered(Side::Server), 0);
                client.clear();
                server.clear();
                exchanges = 0;
                handed_over = false;
            }
        }
        let mut out = ParserOutput::default();
        p.finish(segments.len() as u64, &mut out);
        prop_assert!(out.exchanges.is_empty());
        prop_assert!(p.pending.is_empty());
    }

    /// Valid pipelined traffic, cut anywhere (with gaps only inside bodies), yields exactly
    /// the generated exchanges, the same as when each side is fed whole.
    #[test]
    fn valid_traffic_any_split_same_exchanges(
        messages in prop::collection::vec(message(), 1..8),
        client_points in prop::collection::vec(any::<Index>(), 0..12),
        server_points in prop::collection::vec(any::<Index>(), 0..12),
        choices in prop::collection::vec((any::<bool>(), prop::bool::weighted(0.3)), 1..16),
    ) {
        let allowlist = Arc::new(HeaderAllowlist::default());
        let expected: Vec<Expected> = messages.iter().map(|m| m.expected(&allowlist)).collect();
        let (client, server) = streams(&messages);

        let mut whole = Http1Parser::new(ParserLimits::default(), Arc::clone(&allowlist));
        let out = run(
            &mut whole,
            &client,
            &server,
            &cuts(client.bytes.len(), &[]),
            &cuts(server.bytes.len(), &[]),
            &[(true, false)],
        );
        prop_assert_eq!(&out.issues, &Vec::<ParseIssue>::new());
        prop_assert_eq!(&out.exchanges.iter().map(observed).collect::<Vec<_>>(), &expected);

        let mut split = Http1Parser::new(ParserLimits::default(), Arc::clone(&allowlist));
        let out = run(
            &mut split,
            &client,
            &server,
            &cuts(client.bytes.len(), &client_points),
            &cuts(server.bytes.len(), &server_points),
            &choices,
        );
        prop_assert_eq!(&out.issues, &Vec::<ParseIssue>::new());
        prop_assert_eq!(&out.exchanges.iter().map(observed).collect::<Vec<_>>(), &expected);
    }
}
