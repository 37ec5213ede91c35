//! HTTP/2 (RFC 9113) and gRPC: frames of both directions of one connection, header blocks
//! through HPACK, streams paired by id into [`ParsedExchange`]s.
//!
//! # Design
//!
//! Each direction has a [`Dir`]: a frame-level state machine ([`Phase`]) and its own HPACK
//! [`Decoder`] (each direction has its own dynamic table). Frames are walked in place:
//! only a 9-byte frame header that spans segments, and header blocks (HEADERS,
//! CONTINUATION, PUSH_PROMISE) that span segments or frames, are copied. DATA payloads are
//! never copied: their lengths count the bodies, and for gRPC the 5-byte message prefixes
//! are read as they pass to count messages.
//!
//! A stream's exchange is emitted when both ends have closed it (END_STREAM both ways),
//! when it is reset after its response head, or when the connection ends; body sizes
//! and gRPC trailers (`grpc-status`, the length of `grpc-message`) are known by then.
//! Latency is from the end of the request's header block to the end of the response's.
//!
//! # Joining late and losing bytes
//!
//! A parser made with [`Http2Parser::midstream`] starts both directions out of sync, with
//! HPACK decoders that know they missed insertions ([`Decoder::midstream`]): a header
//! referring to an entry inserted before is unknown (`{unknown}` for `:method`/`:path`,
//! dropped otherwise), never another entry's value. A direction out of sync looks at the
//! start of each later segment for a chain of plausible frame headers that ends exactly
//! at the segment's end ([`frames_tile`]); it resumes there (`FrameResync`). Bytes lost
//! inside a DATA or other skipped payload cost nothing; lost inside a header block they
//! make the decoder forget its table (`Truncated`); lost across a frame header, the
//! direction goes out of sync.
//!
//! # Bounds
//!
//! A header block is buffered up to `max_head_bytes` (else `HeadTooLarge`, the block is
//! skipped and the table forgotten); a decoded header list up to [`MAX_HEADER_LIST`] (else
//! `HeaderListTooLarge`: an HPACK bomb is cut off, not expanded); at most [`MAX_STREAMS`]
//! open streams (the oldest is dropped, `Unanswered`). PRIORITY, WINDOW_UPDATE, PING and
//! unknown frame types are skipped.

use std::{collections::HashMap, sync::Arc};

use super::{
    hpack::{Decoder, Field, MAX_TABLE_SIZE},
    Grpc, Header, HeaderAllowlist, ParseIssue, ParsedExchange, ParserLimits, ParserOutput,
    Protocol, RequestHead, Segment, Side, StreamParser, SKIP_MIN,
};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Most open streams followed on one connection.
pub const MAX_STREAMS: usize = 256;
/// Largest decoded header list kept (name + value + 32 per field).
pub const MAX_HEADER_LIST: usize = 64 * 1024;
/// Placeholder for a `:method` or `:path` whose HPACK entry is unknown.
pub const UNKNOWN: &str = "{unknown}";

const FRAME_HEAD: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// SETTINGS_HEADER_TABLE_SIZE.
const SETTING_HEADER_TABLE_SIZE: u16 = 0x1;

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameHead {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8]) -> Self {
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// Whether this could be a frame a conforming peer sends: a known type with its
    /// flags, stream id rule and length rule. Used only to find frame boundaries again.
    fn plausible(&self) -> bool {
        let on_stream = self.stream != 0;
        let f = self.flags;
        match self.kind {
            DATA => on_stream && f & !(END_STREAM | PADDED) == 0,
            HEADERS => on_stream && f & !(END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG) == 0,
            PRIORITY => on_stream && f == 0 && self.len == 5,
            RST_STREAM => on_stream && f == 0 && self.len == 4,
            SETTINGS => {
                !on_stream
                    && f & !ACK == 0
                    && self.len.is_multiple_of(6)
                    && (f == 0 || self.len == 0)
                    && self.len <= 6 * 16
            }
            PUSH_PROMISE => on_stream && f & !(END_HEADERS | PADDED) == 0 && self.len >= 4,
            PING => !on_stream && f & !ACK == 0 && self.len == 8,
            GOAWAY => !on_stream && f == 0 && self.len >= 8,
            WINDOW_UPDATE => f == 0 && self.len == 4,
            CONTINUATION => on_stream && f & !END_HEADERS == 0,
            _ => false,
        }
    }
}

/// Whether `data` (the captured prefix of a call that moved `len` bytes) begins with a
/// chain of plausible frames that ends exactly at `len`: a safe place to (re)start.
pub fn frames_tile(data: &[u8], len: u64) -> bool {
    let mut pos = 0u64;
    let mut frames = 0;
    while pos < len {
        let at = pos as usize;
        if at + FRAME_HEAD > data.len() {
            // The next frame header was not captured: cannot check the rest.
            return false;
        }
        let head = FrameHead::parse(&data[at..]);
        if !head.plausible() {
            return false;
        }
        pos += FRAME_HEAD as u64 + u64::from(head.len);
        frames += 1;
    }
    frames > 0 && pos == len
}

/// Where a direction is in its byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Client bytes of the connection preface still to pass.
    Preface(usize),
    /// Expecting (the rest of) a frame header.
    Head,
    /// In a frame's payload: bytes left.
    Payload { head: FrameHead, left: u32 },
    /// Lost: waiting for a segment that starts with whole frames.
    Desync,
}

/// A header block being put together from HEADERS/PUSH_PROMISE and CONTINUATION frames.
struct Block {
    stream: u32,
    /// HEADERS (a request, response or trailers) or PUSH_PROMISE (decoded for the table
    /// only).
    kind: u8,
    end_stream: bool,
    start_ns: u64,
    /// The fragments so far.
    bytes: Vec<u8>,
    /// Grew past the limit: decoded for nothing, the table is forgotten.
    too_large: bool,
}

/// One direction of the connection.
struct Dir {
    phase: Phase,
    decoder: Decoder,
    /// A frame header split across segments.
    head_buf: Vec<u8>,
    /// The payload of the current frame when it is kept (header fragments and the
    /// control frames read here), while it spans segments.
    payload: Vec<u8>,
    /// A header block waiting for its CONTINUATION frames.
    block: Option<Block>,
    /// When the current frame's first byte was seen.
    frame_ns: u64,
    /// DATA: padding bytes at the end of the current frame's payload.
    data_pad: u32,
    /// DATA: the pad length byte is still to come.
    data_pad_pending: bool,
    /// The stream offset up to which the kernel was last asked to count without copying.
    skip_ordered: u64,
}

impl Dir {
    fn new(phase: Phase, decoder: Decoder) -> Self {
        Self {
            phase,
            decoder,
            head_buf: Vec::new(),
            payload: Vec::new(),
            block: None,
            frame_ns: 0,
            data_pad: 0,
            data_pad_pending: false,
            skip_ordered: 0,
        }
    }

    fn lose_sync(&mut self) {
        self.phase = Phase::Desync;
        self.head_buf.clear();
        self.payload = Vec::new();
        self.block = None;
        self.decoder.forget();
    }
}

/// Counts gRPC length-prefixed messages in one direction of a stream.
#[derive(Clone, Copy, Debug, Default)]
struct Messages {
    count: u32,
    /// Prefix bytes seen of the next message (0..5).
    prefix_have: u8,
    /// The message length being read from the prefix.
    prefix_len: u32,
    /// Bytes of the current message's body still to pass.
    left: u64,
    /// Bytes were lost: counting stopped for this stream.
    lost: bool,
}

impl Messages {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.lost {
            if self.left > 0 {
                let n = (self.left.min(data.len() as u64)) as usize;
                self.left -= n as u64;
                data = &data[n..];
                continue;
            }
            let b = data[0];
            data = &data[1..];
            match self.prefix_have {
                0 => {}
                1..=4 => self.prefix_len = (self.prefix_len << 8) | u32::from(b),
                _ => unreachable!("prefix is 5 bytes"),
            }
            self.prefix_have += 1;
            if self.prefix_have == 5 {
                self.count += 1;
                self.left = u64::from(self.prefix_len);
                self.prefix_have = 0;
                self.prefix_len = 0;
            }
        }
    }

    fn skip(&mut self, n: u64) {
        if self.lost {
            return;
        }
        if self.prefix_have == 0 && self.left >= n {
            self.left -= n;
        } else {
            self.lost = true;
        }
    }
}

/// What a request header block gave.
#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    headers: Vec<Header>,
    start_ns: u64,
    end_ns: u64,
    body_bytes: u64,
    grpc: bool,
}

/// One stream, from its request header block to both ends closing.
#[derive(Debug)]
struct Stream {
    /// `None`: the request head was lost; the stream is followed to be ended cleanly.
    request: Option<Request>,
    /// Final status and when its header block ended.
    response: Option<(u16, u64)>,
    response_body: u64,
    client_done: bool,
    server_done: bool,
    grpc_status: Option<u8>,
    grpc_message_len: Option<u32>,
    request_messages: Messages,
    response_messages: Messages,
    /// Order of creation, for dropping the oldest.
    seq: u64,
}

impl Stream {
    fn new(request: Option<Request>, seq: u64) -> Self {
        Self {
            request,
            response: None,
            response_body: 0,
            client_done: false,
            server_done: false,
            grpc_status: None,
            grpc_message_len: None,
            request_messages: Messages::default(),
            response_messages: Messages::default(),
            seq,
        }
    }

    /// The exchange, if both the request and the response head were seen.
    fn exchange(self) -> Option<ParsedExchange> {
        let request = self.request?;
        let (status, response_ns) = self.response?;
        let grpc = request.grpc.then_some(Grpc {
            status: self.grpc_status,
            message_len: self.grpc_message_len,
            request_messages: self.request_messages.count,
            response_messages: self.response_messages.count,
        });
        Some(ParsedExchange {
            protocol: Protocol::Http2,
            method: request.method,
            target: request.target,
            minor_version: 0,
            status,
            request_headers: request.headers,
            request_start_ns: request.start_ns,
            request_end_ns: request.end_ns,
            response_ns,
            request_body_bytes: request.body_bytes,
            response_body_bytes: Some(self.response_body),
            grpc,
        })
    }
}

/// HTTP/2 parser for one connection.
pub struct Http2Parser {
    limits: ParserLimits,
    allowlist: Arc<HeaderAllowlist>,
    client: Dir,
    server: Dir,
    streams: HashMap<u32, Stream>,
    next_seq: u64,
    /// Reused list of decoded fields of one block (names and values borrowed by copy).
    fields: Vec<Kept>,
    /// Highest stream id opened so far.
    highest_stream: u32,
    /// After records of the connection were lost: the highest stream id opened before the
    /// latest loss. A stream up to it left unanswered, or a response to a stream never
    /// seen, is an exchange lost, not an unanswered request or a stray response.
    lost_through: Option<u32>,
}

/// A decoded field as the parser needs it: the fields it reads, classified once while
/// decoding; every other field is dropped there, without a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Name {
    Method,
    Path,
    Authority,
    Status,
    GrpcStatus,
    /// `grpc-message`: only its length is kept.
    GrpcMessage(u32),
    ContentType,
    Cookie,
    /// An allowlisted request header (lower case).
    Kept(String),
    /// A field whose name is unknown (an HPACK entry inserted before the parser joined).
    Unknown,
}

impl Name {
    fn classify(name: &[u8], value: Option<&[u8]>, allowlist: &HeaderAllowlist) -> Option<Self> {
        Some(match name {
            b":method" => Self::Method,
            b":path" => Self::Path,
            b":authority" => Self::Authority,
            b":status" => Self::Status,
            b"grpc-status" => Self::GrpcStatus,
            b"grpc-message" => Self::GrpcMessage(value.map_or(0, |v| v.len() as u32)),
            b"content-type" => Self::ContentType,
            b"cookie" => Self::Cookie,
            n if n.starts_with(b":") => return None,
            n => {
                let n = std::str::from_utf8(n).ok()?;
                if !allowlist.allows(n) {
                    return None;
                }
                Self::Kept(n.to_ascii_lowercase())
            }
        })
    }

    /// Whether the value is kept.
    fn keeps_value(&self) -> bool {
        !matches!(self, Self::GrpcMessage(_) | Self::Unknown)
    }
}

/// One field kept from a header block.
type Kept = (Name, Option<String>);

impl Http2Parser {
    /// A connection seen from its start: the client preface comes first.
    pub fn new(limits: ParserLimits, allowlist: Arc<HeaderAllowlist>) -> Self {
        // A server's first SETTINGS can come before the client's preface, when the
        // connection is not known to be HTTP/2 yet: whatever table size it allowed is
        // accepted (the table itself only grows on the encoder's size update).
        let lenient = || {
            let mut d = Decoder::new();
            d.set_max_size(MAX_TABLE_SIZE);
            d
        };
        Self::with(
            limits,
            allowlist,
            Dir::new(Phase::Preface(PREFACE.len()), lenient()),
            Dir::new(Phase::Head, lenient()),
        )
    }

    /// A connection joined under way: both directions wait for a frame boundary and
    /// know their header tables only from what they see inserted.
    pub fn midstream(limits: ParserLimits, allowlist: Arc<HeaderAllowlist>) -> Self {
        Self::with(
            limits,
            allowlist,
            Dir::new(Phase::Desync, Decoder::midstream()),
            Dir::new(Phase::Desync, Decoder::midstream()),
        )
    }

    /// A connection upgraded from HTTP/1.1 (`Upgrade: h2c`): `request` is stream 1,
    /// whose response comes as HTTP/2; the client's preface follows.
    pub fn upgraded(
        limits: ParserLimits,
        allowlist: Arc<HeaderAllowlist>,
        request: RequestHead,
    ) -> Self {
        let mut parser = Self::new(limits, allowlist);
        let mut stream = Stream::new(
            Some(Request {
                grpc: false,
                method: request.method,
                target: request.target,
                headers: request.headers,
                start_ns: request.start_ns,
                end_ns: request.end_ns,
                body_bytes: request.body_bytes,
            }),
            0,
        );
        // The upgrade request is complete: stream 1 is half-closed (local).
        stream.client_done = true;
        parser.streams.insert(1, stream);
        parser.next_seq = 1;
        parser
    }

    fn with(
        limits: ParserLimits,
        allowlist: Arc<HeaderAllowlist>,
        client: Dir,
        server: Dir,
    ) -> Self {
        Self {
            limits,
            allowlist,
            client,
            server,
            streams: HashMap::new(),
            next_seq: 0,
            fields: Vec::new(),
            highest_stream: 0,
            lost_through: None,
        }
    }

    fn dir_mut(&mut self, side: Side) -> &mut Dir {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// Walk `data` (non-empty) in the current phase; returns the bytes used.
    fn step(&mut self, side: Side, ts_ns: u64, data: &[u8], out: &mut ParserOutput) -> usize {
        let dir = self.dir_mut(side);
        match dir.phase {
            Phase::Preface(left) => {
                let offset = PREFACE.len() - left;
                let n = left.min(data.len());
                if data[..n] != PREFACE[offset..offset + n] {
                    out.issues.push(ParseIssue::Malformed);
                    dir.lose_sync();
                    return data.len();
                }
                dir.phase = if n == left {
                    Phase::Head
                } else {
                    Phase::Preface(left - n)
                };
                n
            }
            Phase::Head => {
                if dir.head_buf.is_empty() {
                    dir.frame_ns = ts_ns;
                }
                let head = if dir.head_buf.is_empty() && data.len() >= FRAME_HEAD {
                    FrameHead::parse(data)
                } else {
                    let need = FRAME_HEAD - dir.head_buf.len();
                    let n = need.min(data.len());
                    dir.head_buf.extend_from_slice(&data[..n]);
                    if dir.head_buf.len() < FRAME_HEAD {
                        return n;
                    }
                    let head = FrameHead::parse(&dir.head_buf);
                    dir.head_buf.clear();
                    self.begin_frame(side, head, out);
                    return n;
                };
                self.begin_frame(side, head, out);
                FRAME_HEAD
            }
            Phase::Payload { head, left } => {
                let n = (left as usize).min(data.len());
                self.payload(side, head, left, &data[..n], ts_ns, out);
                n
            }
            Phase::Desync => data.len(),
        }
    }

    /// A frame header was read.
    fn begin_frame(&mut self, side: Side, head: FrameHead, out: &mut ParserOutput) {
        let dir = self.dir_mut(side);
        if dir.block.is_some() && head.kind != CONTINUATION {
            // A header block must be followed by its CONTINUATION frames only.
            out.issues.push(ParseIssue::Malformed);
            dir.lose_sync();
            return;
        }
        dir.payload.clear();
        if head.kind == DATA {
            dir.data_pad = 0;
            dir.data_pad_pending = head.flags & PADDED != 0;
            if !dir.data_pad_pending {
                // The body counts the whole payload; padding is taken off when known.
                self.count_data(side, head, u64::from(head.len));
            }
        }
        let dir = self.dir_mut(side);
        if head.len == 0 {
            self.end_frame(side, head, &[], self.dir_ns(side), out);
        } else {
            dir.phase = Phase::Payload {
                head,
                left: head.len,
            };
        }
    }

    fn dir_ns(&self, side: Side) -> u64 {
        match side {
            Side::Client => self.client.frame_ns,
            Side::Server => self.server.frame_ns,
        }
    }

    /// Bytes of a frame's payload (`chunk`, at most `left` bytes).
    fn payload(
        &mut self,
        side: Side,
        head: FrameHead,
        left: u32,
        chunk: &[u8],
        ts_ns: u64,
        out: &mut ParserOutput,
    ) {
        let remaining = left - chunk.len() as u32;
        let whole = left == head.len && remaining == 0;
        match head.kind {
            DATA => self.data_bytes(side, head, left, chunk),
            HEADERS | CONTINUATION | PUSH_PROMISE | SETTINGS | RST_STREAM | GOAWAY if !whole => {
                let max = self.limits.max_head_bytes;
                let dir = self.dir_mut(side);
                // GOAWAY's debug data is not needed; header fragments are bounded
                // when appended to their block.
                let keep = match head.kind {
                    GOAWAY => 8usize.saturating_sub(dir.payload.len()).min(chunk.len()),
                    _ => chunk.len(),
                };
                if dir.payload.len() + keep <= max {
                    dir.payload.extend_from_slice(&chunk[..keep]);
                }
            }
            _ => {}
        }
        let dir = self.dir_mut(side);
        if remaining > 0 {
            dir.phase = Phase::Payload {
                head,
                left: remaining,
            };
            return;
        }
        dir.phase = Phase::Head;
        if whole {
            self.end_frame(side, head, chunk, ts_ns, out);
        } else {
            let payload = std::mem::take(&mut self.dir_mut(side).payload);
            self.end_frame(side, head, &payload, ts_ns, out);
            let dir = self.dir_mut(side);
            if dir.payload.is_empty() && payload.capacity() <= 16 * 1024 {
                dir.payload = payload;
                dir.payload.clear();
            }
        }
    }

    /// DATA payload bytes: padding, body counting and gRPC messages.
    fn data_bytes(&mut self, side: Side, head: FrameHead, left: u32, mut chunk: &[u8]) {
        let dir = self.dir_mut(side);
        let mut offset = head.len - left;
        if dir.data_pad_pending && !chunk.is_empty() {
            dir.data_pad_pending = false;
            dir.data_pad = u32::from(chunk[0]);
            chunk = &chunk[1..];
            offset += 1;
            let body = u64::from(head.len.saturating_sub(1 + dir.data_pad));
            self.count_data(side, head, body);
        }
        let dir = self.dir_mut(side);
        // Message bytes end where the padding starts.
        let content_end = head.len.saturating_sub(dir.data_pad);
        let usable = content_end.saturating_sub(offset).min(chunk.len() as u32) as usize;
        if let Some(stream) = self.streams.get_mut(&head.stream) {
            let grpc = stream.request.as_ref().is_some_and(|r| r.grpc);
            if grpc {
                let messages = match side {
                    Side::Client => &mut stream.request_messages,
                    Side::Server => &mut stream.response_messages,
                };
                messages.feed(&chunk[..usable]);
            }
        }
    }

    fn count_data(&mut self, side: Side, head: FrameHead, body: u64) {
        if let Some(stream) = self.streams.get_mut(&head.stream) {
            match side {
                Side::Client => {
                    if let Some(r) = &mut stream.request {
                        r.body_bytes += body;
                    }
                }
                Side::Server => stream.response_body += body,
            }
        }
    }

    /// A frame's payload is complete (`payload` holds it, or its kept prefix).
    fn end_frame(
        &mut self,
        side: Side,
        head: FrameHead,
        payload: &[u8],
        ts_ns: u64,
        out: &mut ParserOutput,
    ) {
        match head.kind {
            DATA if head.flags & END_STREAM != 0 => {
                self.end_stream(side, head.stream, out);
            }
            HEADERS | PUSH_PROMISE => {
                let Some(fragment) = header_fragment(head, payload) else {
                    out.issues.push(ParseIssue::Malformed);
                    self.dir_mut(side).decoder.forget();
                    return;
                };
                let frame_ns = self.dir_ns(side);
                let block = Block {
                    stream: head.stream,
                    kind: head.kind,
                    end_stream: head.kind == HEADERS && head.flags & END_STREAM != 0,
                    start_ns: frame_ns,
                    bytes: Vec::new(),
                    too_large: payload.len() as u32 != head.len,
                };
                if head.flags & END_HEADERS != 0 && !block.too_large {
                    // The whole block in one frame: decoded in place.
                    self.header_block(side, block, fragment, ts_ns, out);
                } else {
                    let mut block = block;
                    block.bytes.extend_from_slice(fragment);
                    if head.flags & END_HEADERS != 0 {
                        let bytes = std::mem::take(&mut block.bytes);
                        self.header_block(side, block, &bytes, ts_ns, out);
                    } else {
                        self.dir_mut(side).block = Some(block);
                    }
                }
            }
            CONTINUATION => {
                let max = self.limits.max_head_bytes;
                let dir = self.dir_mut(side);
                let Some(mut block) = dir.block.take() else {
                    // A CONTINUATION with no block open: its block was lost.
                    dir.decoder.forget();
                    return;
                };
                if block.stream != head.stream {
                    out.issues.push(ParseIssue::Malformed);
                    dir.lose_sync();
                    return;
                }
                if payload.len() as u32 != head.len || block.bytes.len() + payload.len() > max {
                    block.too_large = true;
                    block.bytes = Vec::new();
                } else if !block.too_large {
                    block.bytes.extend_from_slice(payload);
                }
                if head.flags & END_HEADERS != 0 {
                    let bytes = std::mem::take(&mut block.bytes);
                    self.header_block(side, block, &bytes, ts_ns, out);
                } else {
                    self.dir_mut(side).block = Some(block);
                }
            }
            RST_STREAM => {
                if let Some(stream) = self.streams.remove(&head.stream) {
                    out.issues.push(ParseIssue::StreamReset);
                    if let Some(exchange) = stream.exchange() {
                        out.exchanges.push(exchange);
                    }
                }
            }
            SETTINGS if head.flags & ACK == 0 => {
                for setting in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([setting[0], setting[1]]);
                    let value =
                        u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                    if id == SETTING_HEADER_TABLE_SIZE {
                        // The sender decodes with this table: it bounds the other
                        // direction's encoder.
                        let size = (value as usize).min(MAX_TABLE_SIZE);
                        self.dir_mut(side.other()).decoder.set_max_size(size);
                    }
                }
            }
            GOAWAY if payload.len() >= 4 => {
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff;
                self.goaway(side, last, out);
            }
            _ => {}
        }
    }

    /// A GOAWAY from `side`: streams the other end opened above `last` were not
    /// processed and end now.
    fn goaway(&mut self, side: Side, last: u32, out: &mut ParserOutput) {
        // Client-initiated streams are odd; a server's GOAWAY ends those above `last`.
        if side != Side::Server {
            return;
        }
        let dropped: Vec<u32> = self
            .streams
            .keys()
            .copied()
            .filter(|&id| id > last && id % 2 == 1)
            .collect();
        for id in dropped {
            if let Some(stream) = self.streams.remove(&id) {
                out.issues.push(ParseIssue::GoAway);
                if let Some(exchange) = stream.exchange() {
                    out.exchanges.push(exchange);
                }
            }
        }
    }

    /// `side` ended its half of a stream.
    fn end_stream(&mut self, side: Side, id: u32, out: &mut ParserOutput) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        match side {
            Side::Client => stream.client_done = true,
            Side::Server => stream.server_done = true,
        }
        if stream.client_done && stream.server_done {
            if let Some(stream) = self.streams.remove(&id) {
                match stream.exchange() {
                    Some(exchange) => out.exchanges.push(exchange),
                    None if self.lost_through.is_some_and(|high| id <= high) => {
                        out.lost_exchanges += 1;
                    }
                    None => out.issues.push(ParseIssue::UnpairedResponse),
                }
            }
        }
    }

    /// A complete header block.
    fn header_block(
        &mut self,
        side: Side,
        block: Block,
        bytes: &[u8],
        ts_ns: u64,
        out: &mut ParserOutput,
    ) {
        if block.too_large {
            out.issues.push(ParseIssue::HeadTooLarge);
            self.dir_mut(side).decoder.forget();
            self.lost_head(side, &block, out);
            return;
        }
        let mut fields = std::mem::take(&mut self.fields);
        fields.clear();
        let allowlist = Arc::clone(&self.allowlist);
        let dir = self.dir_mut(side);
        let result = dir
            .decoder
            .decode(bytes, MAX_HEADER_LIST, &mut |field: Field<'_>| {
                let name = match field.name {
                    Some(n) => match Name::classify(n, field.value, &allowlist) {
                        Some(name) => name,
                        None => return,
                    },
                    None => Name::Unknown,
                };
                let value = if name.keeps_value() {
                    field.value.map(|v| String::from_utf8_lossy(v).into_owned())
                } else {
                    None
                };
                fields.push((name, value));
            });
        match result {
            Ok(stats) => {
                if stats.unknown > 0 {
                    out.issues.push(ParseIssue::HpackUnknown);
                }
                if stats.too_large {
                    out.issues.push(ParseIssue::HeaderListTooLarge);
                }
            }
            Err(_) => {
                out.issues.push(ParseIssue::HpackError);
                self.fields = fields;
                self.lost_head(side, &block, out);
                return;
            }
        }
        if block.kind == HEADERS {
            match side {
                Side::Client => self.request_block(&block, &mut fields, ts_ns, out),
                Side::Server => self.response_block(&block, &fields, ts_ns, out),
            }
            if block.end_stream {
                self.end_stream(side, block.stream, out);
            }
        }
        self.fields = fields;
    }

    /// A header block could not be read: the stream is still followed so that it ends
    /// cleanly, without an exchange.
    fn lost_head(&mut self, side: Side, block: &Block, out: &mut ParserOutput) {
        if block.kind != HEADERS {
            return;
        }
        if side == Side::Client && !self.streams.contains_key(&block.stream) {
            self.open_stream(block.stream, None, out);
        }
        if block.end_stream {
            self.end_stream(side, block.stream, out);
        }
    }

    fn open_stream(&mut self, id: u32, request: Option<Request>, out: &mut ParserOutput) {
        if self.streams.len() >= MAX_STREAMS {
            if let Some((&oldest, _)) = self.streams.iter().min_by_key(|(_, s)| s.seq) {
                if let Some(stream) = self.streams.remove(&oldest) {
                    if stream.request.is_some() {
                        out.issues.push(ParseIssue::Unanswered);
                    }
                }
            }
        }
        self.streams.insert(id, Stream::new(request, self.next_seq));
        self.next_seq += 1;
        self.highest_stream = self.highest_stream.max(id);
    }

    fn request_block(
        &mut self,
        block: &Block,
        fields: &mut [Kept],
        ts_ns: u64,
        out: &mut ParserOutput,
    ) {
        if let Some(stream) = self.streams.get(&block.stream) {
            if stream.request.is_some() || stream.client_done {
                // Request trailers: nothing in them is kept.
                return;
            }
        }
        let mut method = None;
        let mut path = None;
        let mut authority = None;
        let mut grpc = false;
        let mut headers: Vec<Header> = Vec::new();
        let mut cookie: Option<String> = None;
        let mut unknown_pseudo = false;
        for (name, value) in fields.iter_mut() {
            // Each kept value moves into the request once, without another copy.
            match name {
                Name::Unknown => unknown_pseudo |= method.is_none() || path.is_none(),
                Name::Method => method = value.take(),
                Name::Path => path = value.take(),
                Name::Authority => authority = value.take(),
                Name::ContentType => {
                    grpc = value
                        .as_deref()
                        .is_some_and(|v| v.starts_with("application/grpc"));
                    if self.allowlist.allows("content-type") {
                        headers.extend(value.take().map(|value| Header {
                            name: "content-type".into(),
                            value,
                        }));
                    }
                }
                // Cookies may be split into several fields (RFC 9113 §8.2.3): joined
                // back into one header, as HTTP/1 sends it.
                Name::Cookie if self.allowlist.allows("cookie") => {
                    if let Some(v) = value.take() {
                        match &mut cookie {
                            Some(c) => {
                                c.push_str("; ");
                                c.push_str(&v);
                            }
                            None => cookie = Some(v),
                        }
                    }
                }
                Name::Kept(name) if headers.len() < self.limits.max_headers => {
                    headers.extend(value.take().map(|value| Header {
                        name: name.clone(),
                        value,
                    }));
                }
                _ => {}
            }
        }
        if let Some(value) = cookie {
            headers.push(Header {
                name: "cookie".into(),
                value,
            });
        }
        if let Some(authority) = authority {
            if self.allowlist.allows("host") && !headers.iter().any(|h| h.name == "host") {
                headers.insert(
                    0,
                    Header {
                        name: "host".into(),
                        value: authority,
                    },
                );
            }
        }
        if method.is_none() && path.is_none() && !unknown_pseudo {
            // No pseudo-headers at all: not a request head.
            out.issues.push(ParseIssue::Malformed);
            return;
        }
        let request = Request {
            method: method.unwrap_or_else(|| UNKNOWN.into()),
            target: path.unwrap_or_else(|| UNKNOWN.into()),
            headers,
            start_ns: block.start_ns,
            end_ns: ts_ns,
            body_bytes: 0,
            grpc,
        };
        match self.streams.get_mut(&block.stream) {
            Some(stream) => stream.request = Some(request),
            None => self.open_stream(block.stream, Some(request), out),
        }
    }

    fn response_block(
        &mut self,
        block: &Block,
        fields: &[Kept],
        ts_ns: u64,
        out: &mut ParserOutput,
    ) {
        let Some(stream) = self.streams.get_mut(&block.stream) else {
            if block.stream % 2 == 1 {
                if self.lost_through.is_some() {
                    // The answer to a request whose records were lost.
                    out.lost_exchanges += 1;
                } else {
                    // A response to a request we never saw (joined late).
                    out.issues.push(ParseIssue::UnpairedResponse);
                }
            }
            return;
        };
        let mut status = None;
        let number = |value: &Option<String>| value.as_deref().and_then(|v| v.parse::<u16>().ok());
        for (name, value) in fields {
            match name {
                Name::Status => status = number(value),
                Name::GrpcStatus => {
                    stream.grpc_status = number(value).and_then(|n| u8::try_from(n).ok());
                }
                Name::GrpcMessage(len) => stream.grpc_message_len = Some(*len),
                _ => {}
            }
        }
        match status {
            // Informational: the final response follows.
            Some(100..=199) => {}
            Some(status) if stream.response.is_none() => {
                stream.response = Some((status, ts_ns));
            }
            Some(_) => {}
            None if stream.response.is_none() => {
                // A response head whose status is unknown (a lost table entry): the
                // stream is answered; 0 says the status was not seen.
                stream.response = Some((0, ts_ns));
            }
            None => {}
        }
    }

    /// The segment ended inside a long DATA payload: the rest of the frame is left to the
    /// kernel to count without copying (once per frame). Frames are at most 16 KiB unless
    /// the peer raised `SETTINGS_MAX_FRAME_SIZE`, so this pays off for large frames read
    /// or written in several calls.
    fn order_skip(&mut self, side: Side, segment: &Segment<'_>, out: &mut ParserOutput) {
        let Some(at) = segment.at else {
            return;
        };
        let dir = self.dir_mut(side);
        if let Phase::Payload { head, left } = dir.phase {
            let until = at.own + segment.len + u64::from(left);
            if head.kind == DATA && u64::from(left) >= SKIP_MIN && until > dir.skip_ordered {
                dir.skip_ordered = until;
                out.skips.push((side, until));
            }
        }
    }

    /// Bytes of a segment that were not captured.
    fn skip_gap(&mut self, side: Side, gap: u64, out: &mut ParserOutput) {
        let dir = self.dir_mut(side);
        match dir.phase {
            Phase::Payload { head, left } if u64::from(left) >= gap => {
                let left = left - gap as u32;
                match head.kind {
                    DATA => {
                        if dir.data_pad_pending {
                            // The pad length was not captured: the body is counted
                            // without the padding it may hold.
                            dir.data_pad_pending = false;
                            self.count_data(side, head, u64::from(head.len.saturating_sub(1)));
                        }
                        if let Some(stream) = self.streams.get_mut(&head.stream) {
                            match side {
                                Side::Client => stream.request_messages.skip(gap),
                                Side::Server => stream.response_messages.skip(gap),
                            }
                        }
                    }
                    HEADERS | CONTINUATION | PUSH_PROMISE => {
                        // Part of a header block is gone: its insertions are unknown.
                        out.issues.push(ParseIssue::Truncated);
                        dir.decoder.forget();
                        dir.payload = Vec::new();
                        // The block is finished as lost when its frame ends.
                        if let Some(block) = &mut dir.block {
                            block.too_large = true;
                        }
                    }
                    _ => {}
                }
                let dir = self.dir_mut(side);
                if left == 0 {
                    dir.phase = Phase::Head;
                    let payload = std::mem::take(&mut dir.payload);
                    let ns = dir.frame_ns;
                    self.end_frame(side, head, &payload, ns, out);
                } else {
                    dir.phase = Phase::Payload { head, left };
                }
            }
            Phase::Desync => {}
            _ => {
                out.issues.push(ParseIssue::Truncated);
                dir.lose_sync();
            }
        }
    }
}

/// The header block fragment of a HEADERS or PUSH_PROMISE payload, without padding,
/// priority and promised stream id.
fn header_fragment(head: FrameHead, payload: &[u8]) -> Option<&[u8]> {
    let mut start = 0usize;
    let mut pad = 0usize;
    if head.flags & PADDED != 0 {
        pad = usize::from(*payload.first()?);
        start += 1;
    }
    if head.kind == HEADERS && head.flags & PRIORITY_FLAG != 0 {
        start += 5;
    }
    if head.kind == PUSH_PROMISE {
        start += 4;
    }
    let end = payload.len().checked_sub(pad)?;
    payload.get(start..end)
}

impl StreamParser for Http2Parser {
    fn protocol(&self) -> Protocol {
        Protocol::Http2
    }

    fn feed(&mut self, side: Side, segment: Segment<'_>, out: &mut ParserOutput) {
        if segment.lost_before > 0 {
            // Lost records: inside a frame's payload they only shorten it; over a frame
            // head the side resyncs at a segment of whole frames, with the header table
            // marked unknown (the lost bytes may have held insertions).
            let in_payload = matches!(
                self.dir_mut(side).phase,
                Phase::Payload { left, .. } if u64::from(left) >= segment.lost_before
            );
            if !in_payload {
                self.lost_through = Some(self.highest_stream);
            }
            self.skip_gap(side, segment.lost_before, out);
        }
        let data = segment.data;
        let gap = segment.len.saturating_sub(data.len() as u64);
        let dir = self.dir_mut(side);
        if dir.phase == Phase::Desync {
            if !frames_tile(data, segment.len) {
                return;
            }
            out.issues.push(ParseIssue::FrameResync);
            dir.phase = Phase::Head;
            dir.head_buf.clear();
            dir.block = None;
        }
        let mut pos = 0;
        while pos < data.len() {
            let used = self.step(side, segment.ts_ns, &data[pos..], out);
            if used == 0 {
                debug_assert!(false, "h2 parser made no progress");
                self.dir_mut(side).lose_sync();
                break;
            }
            pos += used;
        }
        if gap > 0 {
            self.skip_gap(side, gap, out);
        }
        self.order_skip(side, &segment, out);
    }

    fn finish(&mut self, _ts_ns: u64, out: &mut ParserOutput) {
        let mut streams: Vec<(u32, Stream)> = self.streams.drain().collect();
        streams.sort_by_key(|(_, s)| s.seq);
        let lost_through = self.lost_through.take();
        for (id, stream) in streams {
            let had_request = stream.request.is_some();
            match stream.exchange() {
                Some(exchange) => out.exchanges.push(exchange),
                None if had_request && lost_through.is_some_and(|high| id <= high) => {
                    // Its answer was in records that were lost.
                    out.lost_exchanges += 1;
                }
                None if had_request => out.issues.push(ParseIssue::Unanswered),
                None => {}
            }
        }
        self.highest_stream = 0;
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A literal field with a new name, not indexed (RFC 7541 §6.2.2), raw strings.
    pub(crate) fn lit(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0x00];
        string(&mut out, name.as_bytes());
        string(&mut out, value.as_bytes());
        out
    }

    /// A literal field with a new name, added to the dynamic table (§6.2.1).
    pub(crate) fn lit_indexed(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0x40];
        string(&mut out, name.as_bytes());
        string(&mut out, value.as_bytes());
        out
    }

    /// A literal value for the name at `index`, added to the dynamic table.
    pub(crate) fn lit_name_indexed(index: u8, value: &str) -> Vec<u8> {
        assert!(index < 63);
        let mut out = vec![0x40 | index];
        string(&mut out, value.as_bytes());
        out
    }

    /// An indexed field (§6.1).
    pub(crate) fn indexed(index: u8) -> Vec<u8> {
        assert!(index < 127);
        vec![0x80 | index]
    }

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        assert!(s.len() < 127, "test strings are short");
        out.push(s.len() as u8);
        out.extend_from_slice(s);
    }

    pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub(crate) fn block(fields: &[Vec<u8>]) -> Vec<u8> {
        fields.concat()
    }

    /// `:method GET`, `:scheme https` (static), then `:path` and `:authority`.
    pub(crate) fn get(path: &str) -> Vec<u8> {
        block(&[
            indexed(2),
            indexed(7),
            lit(":path", path),
            lit(":authority", "api.test"),
        ])
    }

    fn settings() -> Vec<u8> {
        frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])
    }

    fn parser() -> Http2Parser {
        Http2Parser::new(
            ParserLimits::default(),
            Arc::new(HeaderAllowlist::default()),
        )
    }

    fn feed(p: &mut Http2Parser, side: Side, ts_ns: u64, data: &[u8], out: &mut ParserOutput) {
        p.feed(
            side,
            Segment {
                ts_ns,
                data,
                len: data.len() as u64,
                ..Default::default()
            },
            out,
        );
    }

    fn rows(out: &ParserOutput) -> Vec<(String, String, u16)> {
        let mut rows: Vec<_> = out
            .exchanges
            .iter()
            .map(|e| (e.method.clone(), e.target.clone(), e.status))
            .collect();
        rows.sort();
        rows
    }

    fn row(m: &str, t: &str, s: u16) -> (String, String, u16) {
        (m.into(), t.into(), s)
    }

    /// One GET on stream 1 with a bearer token, answered 200 with a 5-byte body.
    fn simple() -> (Vec<u8>, Vec<u8>) {
        let mut client = PREFACE.to_vec();
        client.extend(settings());
        let mut req = get("/items/7?x=1");
        req.extend(lit("authorization", "Bearer tok"));
        req.extend(lit("user-agent", "t/1"));
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &req));
        let mut server = settings();
        server.extend(frame(SETTINGS, ACK, 0, &[]));
        server.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &block(&[indexed(8), lit("content-type", "text/plain")]),
        ));
        server.extend(frame(DATA, END_STREAM, 1, b"hello"));
        (client, server)
    }

    /// Records lost on a connection: a stream whose answer was lost, and an answer to a
    /// request that was lost, are lost exchanges; the streams around them pair as usual.
    #[test]
    fn lost_records_cost_their_streams_only() {
        let mut p = parser();
        let mut out = ParserOutput::default();
        let mut client = PREFACE.to_vec();
        client.extend(settings());
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &get("/one")));
        feed(&mut p, Side::Client, 1, &client, &mut out);
        let mut server = settings();
        let ok = |status: u8| block(&[indexed(status)]);
        server.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &ok(8)));
        feed(&mut p, Side::Server, 2, &server, &mut out);
        // Stream 3's answer never reaches the agent; stream 5's request neither.
        feed(
            &mut p,
            Side::Client,
            3,
            &frame(HEADERS, END_HEADERS | END_STREAM, 3, &get("/three")),
            &mut out,
        );
        let lost_answer = frame(HEADERS, END_HEADERS | END_STREAM, 3, &ok(13));
        let lost_request = frame(HEADERS, END_HEADERS | END_STREAM, 5, &get("/five"));
        let seven = frame(HEADERS, END_HEADERS | END_STREAM, 7, &get("/seven"));
        p.feed(
            Side::Client,
            Segment {
                ts_ns: 5,
                data: &seven,
                len: seven.len() as u64,
                at: None,
                lost_before: lost_request.len() as u64,
            },
            &mut out,
        );
        let mut answers = frame(HEADERS, END_HEADERS | END_STREAM, 5, &ok(14));
        answers.extend(frame(HEADERS, END_HEADERS | END_STREAM, 7, &ok(8)));
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 6,
                data: &answers,
                len: answers.len() as u64,
                at: None,
                lost_before: lost_answer.len() as u64,
            },
            &mut out,
        );
        p.finish(7, &mut out);
        assert_eq!(
            rows(&out),
            [row("GET", "/one", 200), row("GET", "/seven", 200)]
        );
        assert_eq!(out.lost_exchanges, 2, "{:?}", out.issues);
        assert!(
            !out.issues.contains(&ParseIssue::Unanswered),
            "{:?}",
            out.issues
        );
        assert!(
            !out.issues.contains(&ParseIssue::UnpairedResponse),
            "{:?}",
            out.issues
        );
    }

    #[test]
    fn one_stream_is_one_exchange() {
        let (client, server) = simple();
        let mut p = parser();
        let mut out = ParserOutput::default();
        feed(&mut p, Side::Client, 10, &client, &mut out);
        feed(&mut p, Side::Server, 30, &server, &mut out);
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert_eq!(out.exchanges.len(), 1);
        let e = &out.exchanges[0];
        assert_eq!(e.protocol, Protocol::Http2);
        assert_eq!(
            (e.method.as_str(), e.target.as_str(), e.status),
            ("GET", "/items/7?x=1", 200)
        );
        assert_eq!(e.response_body_bytes, Some(5));
        assert_eq!(
            (e.request_start_ns, e.request_end_ns, e.response_ns),
            (10, 10, 30)
        );
        let names: Vec<_> = e.request_headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["host", "authorization", "user-agent"]);
        assert_eq!(e.request_headers[0].value, "api.test");
        assert_eq!(e.request_headers[1].value, "Bearer tok");
        assert_eq!(e.grpc, None);
    }

    #[test]
    fn frames_split_at_every_byte_offset() {
        let (client, server) = simple();
        for cut in 0..=client.len().max(server.len()) {
            let mut p = parser();
            let mut out = ParserOutput::default();
            let c = cut.min(client.len());
            let s = cut.min(server.len());
            feed(&mut p, Side::Client, 1, &client[..c], &mut out);
            feed(&mut p, Side::Client, 2, &client[c..], &mut out);
            feed(&mut p, Side::Server, 3, &server[..s], &mut out);
            feed(&mut p, Side::Server, 4, &server[s..], &mut out);
            assert!(out.issues.is_empty(), "cut {cut}: {:?}", out.issues);
            assert_eq!(rows(&out), [row("GET", "/items/7?x=1", 200)], "cut {cut}");
            assert_eq!(out.exchanges[0].response_body_bytes, Some(5));
        }
        // and byte by byte
        let mut p = parser();
        let mut out = ParserOutput::default();
        for (i, b) in client.iter().enumerate() {
            feed(
                &mut p,
                Side::Client,
                i as u64,
                std::slice::from_ref(b),
                &mut out,
            );
        }
        for b in &server {
            feed(&mut p, Side::Server, 999, std::slice::from_ref(b), &mut out);
        }
        assert_eq!(rows(&out), [row("GET", "/items/7?x=1", 200)]);
    }

    #[test]
    fn interleaved_streams_pair_by_id() {
        let mut client = PREFACE.to_vec();
        client.extend(settings());
        for (id, path) in [(1, "/a"), (3, "/b"), (5, "/c")] {
            client.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &get(path)));
        }
        let mut server = settings();
        // answers out of order, bodies interleaved
        server.extend(frame(HEADERS, END_HEADERS, 5, &indexed(13)));
        server.extend(frame(HEADERS, END_HEADERS, 1, &indexed(8)));
        server.extend(frame(DATA, 0, 5, b"nf"));
        server.extend(frame(DATA, 0, 1, b"one"));
        server.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &indexed(9)));
        server.extend(frame(DATA, END_STREAM, 1, b"-more"));
        server.extend(frame(DATA, END_STREAM, 5, b""));
        let mut p = parser();
        let mut out = ParserOutput::default();
        feed(&mut p, Side::Client, 1, &client, &mut out);
        feed(&mut p, Side::Server, 2, &server, &mut out);
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert_eq!(
            rows(&out),
            [
                row("GET", "/a", 200),
                row("GET", "/b", 204),
                row("GET", "/c", 404)
            ]
        );
        let body = |t: &str| {
            out.exchanges
                .iter()
                .find(|e| e.target == t)
                .and_then(|e| e.response_body_bytes)
        };
        assert_eq!(
            (body("/a"), body("/b"), body("/c")),
            (Some(8), Some(0), Some(2))
        );
    }

    #[test]
    fn continuation_and_padding() {
        let mut req = get("/cont");
        req.extend(lit("authorization", "Bearer split-across-frames"));
        let (a, rest) = req.split_at(5);
        let (b, c) = rest.split_at(rest.len() / 2);
        // HEADERS with padding and priority, then two CONTINUATIONs
        let mut first = vec![3u8];
        first.extend_from_slice(&[0x80, 0, 0, 1, 16]);
        first.extend_from_slice(a);
        first.extend_from_slice(&[0, 0, 0]);
        let mut client = PREFACE.to_vec();
        client.extend(frame(
            HEADERS,
            PADDED | PRIORITY_FLAG | END_STREAM,
            1,
            &first,
        ));
        client.extend(frame(CONTINUATION, 0, 1, b));
        client.extend(frame(CONTINUATION, END_HEADERS, 1, c));
        let mut server = frame(HEADERS, END_HEADERS, 1, &indexed(8));
        // padded DATA: pad length 4, 6 bytes of body
        let mut padded = vec![4u8];
        padded.extend_from_slice(b"abcdef");
        padded.extend_from_slice(&[0; 4]);
        server.extend(frame(DATA, PADDED | END_STREAM, 1, &padded));
        for cut in 0..client.len() {
            let mut p = parser();
            let mut out = ParserOutput::default();
            feed(&mut p, Side::Client, 1, &client[..cut], &mut out);
            feed(&mut p, Side::Client, 1, &client[cut..], &mut out);
            feed(&mut p, Side::Server, 2, &server, &mut out);
            assert!(out.issues.is_empty(), "{:?}", out.issues);
            assert_eq!(rows(&out), [row("GET", "/cont", 200)]);
            let e = &out.exchanges[0];
            assert_eq!(e.response_body_bytes, Some(6));
            assert_eq!(e.request_headers[1].value, "Bearer split-across-frames");
        }
    }

    /// A gRPC message: compressed flag, length, body.
    fn message(body: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn grpc_streaming_call_with_trailers() {
        let headers = block(&[
            indexed(3),
            indexed(6),
            lit(":path", "/demo.Greeter/Chat"),
            lit(":authority", "grpc.test"),
            lit("content-type", "application/grpc+proto"),
            lit("te", "trailers"),
            lit("authorization", "Bearer g"),
        ]);
        let mut client = PREFACE.to_vec();
        client.extend(frame(HEADERS, END_HEADERS, 1, &headers));
        // two messages, the second split across DATA frames
        let two = [message(b"hello"), message(b"second message")].concat();
        client.extend(frame(DATA, 0, 1, &two[..12]));
        client.extend(frame(DATA, END_STREAM, 1, &two[12..]));
        let mut server = frame(
            HEADERS,
            END_HEADERS,
            1,
            &block(&[indexed(8), lit("content-type", "application/grpc")]),
        );
        let three = [message(b"a"), message(b""), message(&[7; 300])].concat();
        server.extend(frame(DATA, 0, 1, &three));
        server.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &block(&[lit("grpc-status", "16"), lit("grpc-message", "no token")]),
        ));
        // The request head first; then the response head, the request's messages and
        // the response's messages interleave, split anywhere.
        let head_len = PREFACE.len() + FRAME_HEAD + headers.len();
        for cut in [0, 3, 20, 40, 80, 200, 400] {
            let mut p = parser();
            let mut out = ParserOutput::default();
            let c = (head_len + cut).min(client.len());
            let sc = cut.min(server.len());
            feed(&mut p, Side::Client, 1, &client[..head_len], &mut out);
            feed(&mut p, Side::Server, 2, &server[..sc], &mut out);
            feed(&mut p, Side::Client, 3, &client[head_len..c], &mut out);
            feed(&mut p, Side::Server, 4, &server[sc..], &mut out);
            feed(&mut p, Side::Client, 5, &client[c..], &mut out);
            assert!(out.issues.is_empty(), "{:?}", out.issues);
            assert_eq!(rows(&out), [row("POST", "/demo.Greeter/Chat", 200)]);
            let e = &out.exchanges[0];
            assert_eq!(
                e.grpc,
                Some(Grpc {
                    status: Some(16),
                    message_len: Some(8),
                    request_messages: 2,
                    response_messages: 3,
                })
            );
            assert_eq!(e.request_body_bytes, two.len() as u64);
        }
    }

    #[test]
    fn reset_and_goaway_end_streams() {
        let mut client = PREFACE.to_vec();
        for id in [1, 3, 5] {
            client.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &get("/r")));
        }
        let mut server = frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]);
        server.extend(frame(HEADERS, END_HEADERS, 3, &indexed(8)));
        server.extend(frame(RST_STREAM, 0, 3, &[0, 0, 0, 2]));
        server.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0, b'x']));
        let mut p = parser();
        let mut out = ParserOutput::default();
        feed(&mut p, Side::Client, 1, &client, &mut out);
        feed(&mut p, Side::Server, 2, &server, &mut out);
        // stream 3 was answered before its reset; 1 was reset unanswered; 5 never processed
        assert_eq!(rows(&out), [row("GET", "/r", 200)]);
        assert_eq!(
            out.issues,
            [
                ParseIssue::StreamReset,
                ParseIssue::StreamReset,
                ParseIssue::GoAway
            ]
        );
        assert!(p.streams.is_empty());
    }

    #[test]
    fn joined_midstream_unknown_entries_are_unknown_never_wrong() {
        // Before the agent joined, `:path /secret` and a token were inserted in the
        // client's table; now the client refers to them by index.
        let mut p = Http2Parser::midstream(
            ParserLimits::default(),
            Arc::new(HeaderAllowlist::default()),
        );
        let mut out = ParserOutput::default();
        let request = block(&[
            indexed(2),
            indexed(63),
            lit_name_indexed(1, "api.test"),
            indexed(62),
        ]);
        let c = frame(HEADERS, END_HEADERS | END_STREAM, 41, &request);
        assert!(frames_tile(&c, c.len() as u64));
        // a segment that is not whole frames is skipped while out of sync
        feed(&mut p, Side::Client, 1, &c[3..], &mut out);
        assert!(out.issues.is_empty());
        feed(&mut p, Side::Client, 2, &c, &mut out);
        let s = frame(HEADERS, END_HEADERS | END_STREAM, 41, &indexed(8));
        feed(&mut p, Side::Server, 3, &s, &mut out);
        assert_eq!(out.exchanges.len(), 1, "{out:?}");
        let e = &out.exchanges[0];
        assert_eq!(
            (e.method.as_str(), e.target.as_str(), e.status),
            ("GET", UNKNOWN, 200)
        );
        // the authority inserted after joining is known; the unknown one is not a header
        assert_eq!(e.request_headers.len(), 1);
        assert_eq!(e.request_headers[0].name, "host");
        assert!(out.issues.contains(&ParseIssue::FrameResync));
        assert!(out.issues.contains(&ParseIssue::HpackUnknown));

        // The next request refers to the entry inserted after joining: known.
        let request = block(&[indexed(2), lit(":path", "/next"), indexed(62)]);
        let mut out = ParserOutput::default();
        feed(
            &mut p,
            Side::Client,
            4,
            &frame(HEADERS, END_HEADERS | END_STREAM, 43, &request),
            &mut out,
        );
        feed(
            &mut p,
            Side::Server,
            5,
            &frame(HEADERS, END_HEADERS | END_STREAM, 43, &indexed(8)),
            &mut out,
        );
        assert_eq!(rows(&out), [row("GET", "/next", 200)]);
        assert_eq!(out.exchanges[0].request_headers[0].value, "api.test");
    }

    #[test]
    fn lost_bytes_in_data_cost_nothing_and_across_heads_resync() {
        let (client, server) = simple();
        let mut p = parser();
        let mut out = ParserOutput::default();
        feed(&mut p, Side::Client, 1, &client, &mut out);
        // the response's DATA payload was not captured past its first byte
        let cut = server.len() - 4;
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 2,
                data: &server[..cut],
                len: server.len() as u64,
                ..Default::default()
            },
            &mut out,
        );
        assert_eq!(rows(&out), [row("GET", "/items/7?x=1", 200)]);
        assert!(out.issues.is_empty());

        // A gap over a frame header: out of sync until a segment of whole frames.
        let mut out = ParserOutput::default();
        let req = frame(HEADERS, END_HEADERS | END_STREAM, 3, &get("/after"));
        let lost = frame(DATA, 0, 3, &[0; 40]);
        p.feed(
            Side::Client,
            Segment {
                ts_ns: 3,
                data: &lost[..5],
                len: (lost.len() + 20) as u64,
                ..Default::default()
            },
            &mut out,
        );
        assert_eq!(out.issues, [ParseIssue::Truncated]);
        let req5 = frame(HEADERS, END_HEADERS | END_STREAM, 5, &get("/after"));
        feed(&mut p, Side::Client, 4, &req[2..], &mut out);
        feed(&mut p, Side::Client, 5, &req5, &mut out);
        feed(
            &mut p,
            Side::Server,
            6,
            &frame(HEADERS, END_HEADERS | END_STREAM, 5, &indexed(8)),
            &mut out,
        );
        assert_eq!(rows(&out), [row("GET", "/after", 200)]);
        assert!(out.issues.contains(&ParseIssue::FrameResync));
    }

    #[test]
    fn a_long_data_frame_is_left_to_the_kernel_once_and_its_body_still_counts() {
        let (client, _) = simple();
        let mut p = parser();
        let mut out = ParserOutput::default();
        feed(&mut p, Side::Client, 1, &client, &mut out);
        let body = vec![7u8; 100_000];
        let mut server = frame(HEADERS, END_HEADERS, 1, &indexed(8));
        server.extend(frame(DATA, 0, 1, &body));
        server.extend(frame(DATA, END_STREAM, 1, b"tail"));
        let at = |own: u64| {
            Some(crate::http::Offsets {
                own,
                peer: client.len() as u64,
            })
        };
        // The first call carries the head and 1,000 bytes of the long frame.
        let first = FRAME_HEAD + indexed(8).len() + FRAME_HEAD + 1000;
        let frame_end = (FRAME_HEAD + indexed(8).len() + FRAME_HEAD + body.len()) as u64;
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 2,
                data: &server[..first],
                len: first as u64,
                at: at(0),
                lost_before: 0,
            },
            &mut out,
        );
        assert_eq!(out.skips, [(Side::Server, frame_end)]);
        // A second call inside the same frame orders nothing more.
        let second = first + 5000;
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 3,
                data: &server[first..second],
                len: 5000,
                at: at(first as u64),
                lost_before: 0,
            },
            &mut out,
        );
        assert_eq!(out.skips.len(), 1);
        // The kernel counted the rest of the frame without sending it: the next record
        // starts after it, the skipped bytes before it.
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 4,
                data: &server[frame_end as usize..],
                len: (server.len() - frame_end as usize) as u64,
                at: at(frame_end),
                lost_before: frame_end - second as u64,
            },
            &mut out,
        );
        assert_eq!(rows(&out), [row("GET", "/items/7?x=1", 200)]);
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert_eq!(
            out.exchanges[0].response_body_bytes,
            Some(body.len() as u64 + 4)
        );
        // A short frame (under `SKIP_MIN`) is never worth an order.
        let mut p = parser();
        let mut out = ParserOutput::default();
        feed(&mut p, Side::Client, 1, &client, &mut out);
        let mut server = frame(HEADERS, END_HEADERS, 1, &indexed(8));
        server.extend(frame(DATA, END_STREAM, 1, &vec![1u8; 16_384]));
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 2,
                data: &server[..100],
                len: 100,
                at: at(0),
                lost_before: 0,
            },
            &mut out,
        );
        assert!(out.skips.is_empty());
    }

    #[test]
    fn padded_data_whose_pad_length_was_lost_still_counts() {
        let (client, _) = simple();
        let mut p = parser();
        let mut out = ParserOutput::default();
        feed(&mut p, Side::Client, 1, &client, &mut out);
        let mut server = frame(HEADERS, END_HEADERS, 1, &indexed(8));
        let head_len = server.len();
        let mut padded = vec![4u8];
        padded.extend_from_slice(b"abcdef");
        padded.extend_from_slice(&[0; 4]);
        server.extend(frame(DATA, PADDED | END_STREAM, 1, &padded));
        // captured up to the DATA frame's header; its payload was not
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 2,
                data: &server[..head_len + FRAME_HEAD],
                len: server.len() as u64,
                ..Default::default()
            },
            &mut out,
        );
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert_eq!(rows(&out), [row("GET", "/items/7?x=1", 200)]);
        // at most the payload less its pad length byte
        assert_eq!(out.exchanges[0].response_body_bytes, Some(10));
    }

    #[test]
    fn oversized_header_block_is_bounded() {
        let limits = ParserLimits {
            max_head_bytes: 1024,
            ..ParserLimits::default()
        };
        let mut p = Http2Parser::new(limits, Arc::new(HeaderAllowlist::default()));
        let mut out = ParserOutput::default();
        let mut client = PREFACE.to_vec();
        client.extend(frame(HEADERS, END_STREAM, 1, &get("/big")));
        for _ in 0..10 {
            client.extend(frame(CONTINUATION, 0, 1, &[0x20; 500]));
        }
        client.extend(frame(CONTINUATION, END_HEADERS, 1, &[]));
        feed(&mut p, Side::Client, 1, &client, &mut out);
        assert!(
            out.issues.contains(&ParseIssue::HeadTooLarge),
            "{:?}",
            out.issues
        );
        assert!(p.client.payload.capacity() <= 2048);
        // the stream is still followed and ends without an exchange
        feed(
            &mut p,
            Side::Server,
            2,
            &frame(HEADERS, END_HEADERS | END_STREAM, 1, &indexed(8)),
            &mut out,
        );
        assert!(out.exchanges.is_empty());
        assert!(p.streams.is_empty());
    }

    #[test]
    fn hpack_bomb_is_cut_off() {
        // 2 KB on the wire that would decode to ~270 KB of headers.
        let mut req = get("/bomb");
        req.extend(lit_indexed("x-a", &"v".repeat(100)));
        for _ in 0..2000 {
            req.extend(indexed(62));
        }
        let mut client = PREFACE.to_vec();
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &req));
        let mut p = parser();
        let mut out = ParserOutput::default();
        feed(&mut p, Side::Client, 1, &client, &mut out);
        feed(
            &mut p,
            Side::Server,
            2,
            &frame(HEADERS, END_HEADERS | END_STREAM, 1, &indexed(8)),
            &mut out,
        );
        assert_eq!(out.issues, [ParseIssue::HeaderListTooLarge]);
        // the head before the cut is kept, and the kept fields stay small
        assert_eq!(rows(&out), [row("GET", "/bomb", 200)]);
        assert!(p.fields.len() < 1000, "{}", p.fields.len());
    }

    #[test]
    fn cookies_split_in_fields_are_joined() {
        let mut req = get("/c");
        req.extend(lit("cookie", "a=1"));
        req.extend(lit("cookie", "sid=xyz"));
        let mut client = PREFACE.to_vec();
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &req));
        let mut p = parser();
        let mut out = ParserOutput::default();
        feed(&mut p, Side::Client, 1, &client, &mut out);
        feed(
            &mut p,
            Side::Server,
            2,
            &frame(HEADERS, END_HEADERS | END_STREAM, 1, &indexed(8)),
            &mut out,
        );
        let e = &out.exchanges[0];
        let cookie: Vec<_> = e
            .request_headers
            .iter()
            .filter(|h| h.name == "cookie")
            .collect();
        assert_eq!(cookie.len(), 1);
        assert_eq!(cookie[0].value, "a=1; sid=xyz");
    }

    #[test]
    fn upgraded_request_is_stream_one() {
        let request = RequestHead {
            method: "GET".into(),
            target: "/up".into(),
            headers: vec![],
            start_ns: 1,
            end_ns: 2,
            body_bytes: 0,
        };
        let mut p = Http2Parser::upgraded(
            ParserLimits::default(),
            Arc::new(HeaderAllowlist::default()),
            request,
        );
        let mut out = ParserOutput::default();
        let mut server = settings();
        server.extend(frame(HEADERS, END_HEADERS, 1, &indexed(8)));
        server.extend(frame(DATA, END_STREAM, 1, b"xy"));
        feed(&mut p, Side::Server, 5, &server, &mut out);
        assert_eq!(rows(&out), [row("GET", "/up", 200)]);
        let mut client = PREFACE.to_vec();
        client.extend(settings());
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &get("/second")));
        feed(&mut p, Side::Client, 6, &client, &mut out);
        feed(
            &mut p,
            Side::Server,
            7,
            &frame(HEADERS, END_HEADERS | END_STREAM, 3, &indexed(13)),
            &mut out,
        );
        assert_eq!(
            rows(&out),
            [row("GET", "/second", 404), row("GET", "/up", 200)]
        );
    }

    #[test]
    fn stream_table_is_bounded() {
        let mut p = parser();
        let mut out = ParserOutput::default();
        let mut client = PREFACE.to_vec();
        for i in 0..(MAX_STREAMS as u32 + 50) {
            client.extend(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                2 * i + 1,
                &get("/s"),
            ));
        }
        feed(&mut p, Side::Client, 1, &client, &mut out);
        assert_eq!(p.streams.len(), MAX_STREAMS);
        assert_eq!(
            out.issues
                .iter()
                .filter(|i| **i == ParseIssue::Unanswered)
                .count(),
            50
        );
        p.finish(2, &mut out);
        assert!(p.streams.is_empty());
    }
}
