//! Property tests of the HTTP/2 parser: arbitrary bytes never break its bounds, and valid
//! traffic (interleaved streams, CONTINUATION, padding, gRPC messages) yields the same
//! exchanges however it is split into segments.
//!
//! Case counts are small so the module runs in seconds in a debug build; failures are not
//! persisted to files.

use proptest::prelude::*;
use proptest::sample::select;

use super::tests::{block, frame, indexed, lit, lit_indexed};
use super::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Frames and pieces that steer the parser into its states, mixed with random bytes.
fn pieces() -> Vec<Vec<u8>> {
    vec![
        PREFACE.to_vec(),
        frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0]),
        frame(SETTINGS, ACK, 0, &[]),
        frame(HEADERS, END_HEADERS | END_STREAM, 1, &tests::get("/a")),
        frame(HEADERS, END_HEADERS, 3, &tests::get("/b")),
        frame(HEADERS, 0, 5, &tests::get("/c")),
        frame(CONTINUATION, END_HEADERS, 5, &lit("x", "y")),
        frame(CONTINUATION, 0, 5, &[0x20; 40]),
        frame(HEADERS, END_HEADERS, 1, &indexed(8)),
        frame(HEADERS, END_HEADERS | END_STREAM, 3, &indexed(13)),
        frame(
            HEADERS,
            END_HEADERS,
            1,
            &block(&[lit_indexed("k", "v"), indexed(62)]),
        ),
        frame(
            HEADERS,
            END_HEADERS,
            7,
            &[0xbf, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ),
        frame(DATA, 0, 1, &[0, 0, 0, 0, 3, 1, 2, 3]),
        frame(DATA, END_STREAM, 3, b"body"),
        frame(DATA, PADDED | END_STREAM, 1, &[200, 1, 2]),
        frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]),
        frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]),
        frame(PING, 0, 0, &[0; 8]),
        frame(WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0]),
        frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2, 0x82]),
        frame(0x42, 0xff, 9, b"unknown type"),
        // a frame header announcing a huge payload
        vec![0xff, 0xff, 0xff, DATA, 0, 0, 0, 0, 1],
    ]
}

/// One segment of the arbitrary-bytes property.
#[derive(Clone, Debug)]
struct RawSegment {
    side: Side,
    data: Vec<u8>,
    gap: u64,
    finish: bool,
}

fn raw_segment() -> impl Strategy<Value = RawSegment> {
    let piece = prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..64),
        8 => select(pieces()),
        2 => (select(pieces()), any::<prop::sample::Index>())
            .prop_map(|(p, cut)| p[..cut.index(p.len() + 1)].to_vec()),
    ];
    (
        any::<bool>(),
        prop::collection::vec(piece, 1..5),
        prop_oneof![6 => Just(0u64), 1 => 1u64..100_000],
        prop::bool::weighted(0.05),
    )
        .prop_map(|(client, parts, gap, finish)| RawSegment {
            side: if client { Side::Client } else { Side::Server },
            data: parts.concat(),
            gap,
            finish,
        })
}

fn limits() -> ParserLimits {
    ParserLimits {
        max_head_bytes: 512,
        ..ParserLimits::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_segments_keep_bounds(
        midstream in any::<bool>(),
        segments in prop::collection::vec(raw_segment(), 1..40),
    ) {
        let allowlist = Arc::new(HeaderAllowlist::default());
        let mut p = if midstream {
            Http2Parser::midstream(limits(), allowlist)
        } else {
            Http2Parser::new(limits(), allowlist)
        };
        let mut out = ParserOutput::default();
        let mut ts = 0;
        for s in &segments {
            ts += 1;
            p.feed(
                s.side,
                Segment { ts_ns: ts, data: &s.data, len: s.data.len() as u64 + s.gap, ..Default::default() },
                &mut out,
            );
            prop_assert!(p.streams.len() <= MAX_STREAMS);
            for dir in [&p.client, &p.server] {
                prop_assert!(dir.head_buf.len() < FRAME_HEAD);
                prop_assert!(dir.payload.len() <= limits().max_head_bytes);
                prop_assert!(dir.block.as_ref().map_or(0, |b| b.bytes.len()) <= limits().max_head_bytes);
                prop_assert!(dir.decoder.table_bytes() <= MAX_TABLE_SIZE);
            }
            for e in &out.exchanges {
                prop_assert!(e.request_headers.len() <= ParserLimits::default().max_headers + 2);
            }
            if s.finish {
                p.finish(ts, &mut out);
                prop_assert!(p.streams.is_empty());
            }
        }
        p.finish(ts, &mut out);
    }
}

/// One generated stream: request, response, bodies.
#[derive(Clone, Debug)]
struct Gen {
    path: String,
    post: bool,
    status: u16,
    grpc: bool,
    request_body: Vec<Vec<u8>>,
    response_body: Vec<Vec<u8>>,
    token: Option<String>,
}

fn gen_stream() -> impl Strategy<Value = Gen> {
    let body = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..4);
    (
        "/[a-z]{1,8}(/[0-9]{1,4})?",
        any::<bool>(),
        select(vec![200u16, 201, 204, 301, 404, 500]),
        prop::bool::weighted(0.3),
        body.clone(),
        body,
        prop::option::of("[A-Za-z0-9]{4,20}"),
    )
        .prop_map(
            |(path, post, status, grpc, request_body, response_body, token)| Gen {
                path,
                post,
                status,
                grpc,
                request_body,
                response_body,
                token,
            },
        )
}

fn status_field(status: u16) -> Vec<u8> {
    match status {
        200 => indexed(8),
        204 => indexed(9),
        404 => indexed(13),
        500 => indexed(14),
        s => lit(":status", &s.to_string()),
    }
}

fn grpc_message(body: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(body.len() as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Frames of one side's header block, split into HEADERS + CONTINUATIONs at `split`.
fn header_frames(id: u32, fields: &[u8], end_stream: bool, split: usize, padded: bool) -> Vec<u8> {
    let cut = split.min(fields.len());
    let end = if end_stream { END_STREAM } else { 0 };
    let (first, rest) = fields.split_at(cut);
    let mut payload = Vec::new();
    let mut flags = end;
    if padded {
        payload.push(2);
        flags |= PADDED;
    }
    payload.extend_from_slice(first);
    if padded {
        payload.extend_from_slice(&[0, 0]);
    }
    if rest.is_empty() {
        frame(HEADERS, flags | END_HEADERS, id, &payload)
    } else {
        let mut out = frame(HEADERS, flags, id, &payload);
        out.extend(frame(CONTINUATION, END_HEADERS, id, rest));
        out
    }
}

/// Client and server byte streams for `streams`, interleaved round-robin frame by frame.
fn encode(streams: &[Gen], split: usize, padded: bool) -> (Vec<u8>, Vec<u8>) {
    let mut client_frames: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut server_frames: Vec<Vec<Vec<u8>>> = Vec::new();
    for (i, g) in streams.iter().enumerate() {
        let id = 2 * i as u32 + 1;
        let mut fields = block(&[
            indexed(if g.post || g.grpc { 3 } else { 2 }),
            indexed(7),
            lit(":path", &g.path),
            lit_indexed(":authority", "gen.test"),
        ]);
        if g.grpc {
            fields.extend(lit("content-type", "application/grpc"));
        }
        if let Some(t) = &g.token {
            fields.extend(lit("authorization", &format!("Bearer {t}")));
        }
        let messages = |parts: &[Vec<u8>]| -> Vec<Vec<u8>> {
            if g.grpc {
                parts.iter().map(|p| grpc_message(p)).collect()
            } else {
                parts.to_vec()
            }
        };
        let mut c = Vec::new();
        let req_parts = messages(&g.request_body);
        c.push(header_frames(
            id,
            &fields,
            req_parts.is_empty(),
            split,
            padded,
        ));
        for (j, part) in req_parts.iter().enumerate() {
            let last = j + 1 == req_parts.len();
            c.push(frame(DATA, if last { END_STREAM } else { 0 }, id, part));
        }
        let mut s = Vec::new();
        let resp_parts = messages(&g.response_body);
        let trailers = g.grpc;
        s.push(header_frames(
            id,
            &status_field(g.status),
            resp_parts.is_empty() && !trailers,
            split,
            padded,
        ));
        for (j, part) in resp_parts.iter().enumerate() {
            let last = j + 1 == resp_parts.len() && !trailers;
            s.push(frame(DATA, if last { END_STREAM } else { 0 }, id, part));
        }
        if trailers {
            s.push(header_frames(
                id,
                &lit("grpc-status", "0"),
                true,
                split,
                false,
            ));
        }
        client_frames.push(c);
        server_frames.push(s);
    }
    let interleave = |per_stream: Vec<Vec<Vec<u8>>>| {
        let mut out = Vec::new();
        let mut iters: Vec<_> = per_stream.into_iter().map(|v| v.into_iter()).collect();
        loop {
            let mut any = false;
            for it in &mut iters {
                if let Some(f) = it.next() {
                    out.extend(f);
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        out
    };
    let mut client = PREFACE.to_vec();
    client.extend(frame(SETTINGS, 0, 0, &[]));
    client.extend(interleave(client_frames));
    let mut server = frame(SETTINGS, 0, 0, &[]);
    server.extend(interleave(server_frames));
    (client, server)
}

/// Cut `bytes` at the given (sorted, deduplicated) fractions.
fn cut(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

type Row = (
    String,
    String,
    u16,
    Option<u64>,
    Option<(u32, u32)>,
    Option<String>,
);

fn expected(streams: &[Gen]) -> Vec<Row> {
    let mut rows: Vec<Row> = streams
        .iter()
        .map(|g| {
            let len = |parts: &[Vec<u8>]| {
                parts
                    .iter()
                    .map(|p| p.len() as u64 + if g.grpc { 5 } else { 0 })
                    .sum::<u64>()
            };
            (
                if g.post || g.grpc { "POST" } else { "GET" }.to_string(),
                g.path.clone(),
                g.status,
                Some(len(&g.response_body)),
                g.grpc
                    .then_some((g.request_body.len() as u32, g.response_body.len() as u32)),
                g.token.as_ref().map(|t| format!("Bearer {t}")),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn seen(out: &ParserOutput) -> Vec<Row> {
    let mut rows: Vec<Row> = out
        .exchanges
        .iter()
        .map(|e| {
            (
                e.method.clone(),
                e.target.clone(),
                e.status,
                e.response_body_bytes,
                e.grpc
                    .as_ref()
                    .map(|g| (g.request_messages, g.response_messages)),
                e.request_headers
                    .iter()
                    .find(|h| h.name == "authorization")
                    .map(|h| h.value.clone()),
            )
        })
        .collect();
    rows.sort();
    rows
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn valid_traffic_is_split_proof(
        streams in prop::collection::vec(gen_stream(), 1..12),
        split in 0usize..40,
        padded in any::<bool>(),
        client_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        server_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let (client, server) = encode(&streams, split, padded);
        let want = expected(&streams);

        // Whole: all requests, then all responses.
        let mut p = Http2Parser::new(ParserLimits::default(), Arc::new(HeaderAllowlist::default()));
        let mut out = ParserOutput::default();
        p.feed(Side::Client, Segment { ts_ns: 1, data: &client, len: client.len() as u64, ..Default::default() }, &mut out);
        p.feed(Side::Server, Segment { ts_ns: 2, data: &server, len: server.len() as u64, ..Default::default() }, &mut out);
        prop_assert!(out.issues.is_empty(), "{:?}", out.issues);
        prop_assert_eq!(seen(&out), want.clone());
        prop_assert!(p.streams.is_empty());

        // Split anywhere: the requests' segments, then the responses'.
        let mut p = Http2Parser::new(ParserLimits::default(), Arc::new(HeaderAllowlist::default()));
        let mut out = ParserOutput::default();
        for (i, seg) in cut(&client, &client_cuts).iter().enumerate() {
            p.feed(Side::Client, Segment { ts_ns: i as u64, data: seg, len: seg.len() as u64, ..Default::default() }, &mut out);
        }
        for (i, seg) in cut(&server, &server_cuts).iter().enumerate() {
            p.feed(Side::Server, Segment { ts_ns: 100 + i as u64, data: seg, len: seg.len() as u64, ..Default::default() }, &mut out);
        }
        prop_assert!(out.issues.is_empty(), "{:?}", out.issues);
        prop_assert_eq!(seen(&out), want);
    }
}
