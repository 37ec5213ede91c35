//! HTTP/1.0 and HTTP/1.1: request and response heads from the two byte streams of one
//! connection.
//!
//! # Design
//!
//! Each direction (client → server requests, server → client responses) has its own
//! [`Direction`]: a small state machine ([`State`]) plus a buffer that holds only the part
//! of a head (or chunk-size line, or trailer section) that spans segments. When a head
//! is whole inside one segment it is parsed in place, without copying. Heads are parsed
//! with `httparse`; chunk-size lines with `httparse::parse_chunk_size`. Bodies are never
//! stored: the state machine only counts their bytes down.
//!
//! Requests wait in a FIFO (`pending`) until a response head arrives; the exchange is
//! emitted as soon as that head is complete, so a long or streaming body does not delay it.
//!
//! # What is a request line
//!
//! The method is any token (RFC 9110 §9.1, tchar of §5.6.2), not a list of known methods:
//! `PURGE`, `M-SEARCH` or a custom `FOO` are HTTP/1 as long as the rest of the line is. A
//! request line is `token SP request-target SP HTTP/1.0|HTTP/1.1 (CRLF|LF)`, where the
//! target is origin-form (`/…`), asterisk-form (`*`), absolute-form with an `http` or
//! `https` scheme, or authority-form for `CONNECT`. Spaces may repeat, as the parser
//! allows. Empty lines before a request line are skipped (RFC 9112 §2.2), at most
//! [`MAX_LEADING_BLANK`] bytes of them. `PRI` is not a method: it only starts the HTTP/2
//! preface.
//!
//! Protocols that borrow HTTP's syntax are not HTTP: RTSP (`rtsp://` targets, `RTSP/1.0`),
//! SIP (`sip:` targets, `SIP/2.0`), Icecast's `SOURCE … ICE/1.0`, and HTTP/0.9 (`GET /`
//! with no version) all fail the line check. `httparse` accepts nothing but `HTTP/1.0` and
//! `HTTP/1.1` either, so such a line arriving later on an HTTP/1 connection is `Malformed`,
//! and a response that does not start with `HTTP/1.x` never pairs.
//!
//! [`detect`] sees only a short probe of the client's first bytes. A line whole in the
//! probe is checked as above (the line end may still be missing once the version is
//! complete). A longer line is decided, once the probe holds [`HEURISTIC_BYTES`] bytes, by
//! what it shows: a well-known method ([`WELL_KNOWN_METHODS`]) or an origin-form target
//! makes it HTTP/1; anything inconsistent with a request line is `Unknown`; else more bytes
//! are needed.
//!
//! # Lost bytes
//!
//! A segment whose `len` exceeds its captured `data` ends with a gap. In a body the gap
//! simply counts down the body (Content-Length left, or the current chunk's data left). A
//! gap where a head, chunk-size line, chunk CRLF or trailer was expected means sync is lost:
//! `Truncated` is reported and the direction goes [`State::Desync`]. `Malformed` (bytes
//! httparse rejects, an unusable Content-Length) and `HeadTooLarge` (a head still
//! incomplete past `max_head_bytes`, or more than `max_headers` headers) do the same. A
//! desynchronised direction looks at the *start* of each later segment and resumes there
//! if it begins a message: a whole valid request line, optionally after empty lines
//! (client), or `HTTP/1.0 ` / `HTTP/1.1 ` (server).
//!
//! To keep request/response pairing right after a loss:
//! * a request head that was lost (Truncated or HeadTooLarge: we saw or skipped the start
//!   of a request) leaves a placeholder in the FIFO, so the response to it is consumed
//!   silently instead of being paired with the next request;
//! * a response head that was lost in the same way removes the oldest pending request
//!   (that request was answered; we just could not read the answer).
//!
//! Malformed bytes leave no placeholder: we cannot tell they were a request.
//!
//! # Upgrades
//!
//! * A request whose `Upgrade` header lists `h2c` (whatever the allowlist), answered by a
//!   101 whose `Upgrade` lists `h2c`, hands the connection to HTTP/2 (RFC 7540 §3.2): no
//!   exchange and no `Upgraded` for the 101; instead [`ParserOutput::h2c`] carries the
//!   request (its response comes on stream 1) and the offset in the server segment where
//!   the HTTP/2 bytes start, just after the 101 head. The parser then ignores everything.
//!   A normal response to such a request is a normal exchange.
//! * Any other 101, or a 2xx to CONNECT, emits the exchange, reports `Upgraded`, and from
//!   then on the whole connection is ignored (pending requests are dropped without an
//!   `Unanswered`).
//! * After a CONNECT request the client side ignores its bytes until the CONNECT is
//!   answered (they would be tunnel bytes); if it is refused, the client side resumes at
//!   the next segment that starts a request.
//!
//! # Other choices
//!
//! * `pending` holds at most `max_pending` requests: when full, the oldest is dropped and
//!   reported `Unanswered`.
//! * `request_body_bytes` is the declared Content-Length, or for a chunked request the sum
//!   of the chunk sizes seen up to the moment the response head completes.
//! * `response_body_bytes` is `Some(n)` for Content-Length `n`, `Some(0)` for responses
//!   that have no body by definition (to HEAD, 204, 304), `None` for chunked bodies,
//!   bodies delimited by close, and 101 / CONNECT tunnels.
//! * 1xx responses other than 101 are skipped.
//! * `finish` reports one `Unanswered` per pending request (placeholders excluded) and one
//!   `Truncated` per direction left holding a partial head; then the parser is reset.

use std::{collections::VecDeque, mem::MaybeUninit, sync::Arc};

use bytes::BytesMut;

use super::{
    Detection, H2cUpgrade, Header, HeaderAllowlist, Offsets, ParseIssue, ParsedExchange,
    ParserLimits, ParserOutput, Protocol, RequestHead, Segment, Side, StreamParser, SKIP_MIN,
};

#[cfg(test)]
mod loss_tests;
#[cfg(test)]
mod proptests;

/// Methods [`detect`] trusts when the request line is longer than its probe: RFC 9110,
/// PATCH, WebDAV (RFC 4918, 3253, 3744, 4791, 5323) and QUERY. Any other token is a method
/// too, once the whole line is seen (or its target is origin-form).
const WELL_KNOWN_METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"PATCH",
    b"OPTIONS",
    b"CONNECT",
    b"TRACE",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"REPORT",
    b"SEARCH",
    b"MKCALENDAR",
    b"ACL",
    b"MERGE",
    b"CHECKOUT",
    b"CHECKIN",
    b"UNCHECKOUT",
    b"MKACTIVITY",
    b"MKWORKSPACE",
    b"VERSION-CONTROL",
    b"BASELINE-CONTROL",
    b"LABEL",
    b"UPDATE",
    b"ORDERPATCH",
    b"BIND",
    b"UNBIND",
    b"REBIND",
    b"QUERY",
];

/// From this many bytes on, [`detect`] decides a request line whose end it has not seen
/// (the connection stage's smallest probe).
pub const HEURISTIC_BYTES: usize = 24;

/// Most empty-line bytes (CR, LF) skipped before a request line by [`detect`] and when
/// resynchronising.
const MAX_LEADING_BLANK: usize = 32;

/// Start of the HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// The version of a request line, up to its minor digit.
const VERSION_START: &[u8] = b"HTTP/1.";

/// What a response starts with.
const RESPONSE_STARTS: [&[u8]; 2] = [b"HTTP/1.1 ", b"HTTP/1.0 "];

/// Headers parsed with a stack array when the limit allows (the default limit is 100).
const STACK_HEADERS: usize = 128;

/// A buffer that grew beyond this is released when emptied, so an idle connection does not
/// keep a large allocation.
const KEEP_CAPACITY: usize = 8 * 1024;

/// tchar (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte `httparse` accepts in a request-target.
fn is_target_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x7e | 0x80..=0xff)
}

/// A byte of an authority (`host:port`, IP literals included).
fn is_authority_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b)
}

/// Whether `target`, the start of a request-target, is consistent with the forms HTTP/1
/// uses with this method.
fn target_consistent(method: &[u8], target: &[u8]) -> bool {
    if method == b"CONNECT" {
        return target.iter().all(|&b| is_authority_byte(b));
    }
    match target.first() {
        None | Some(b'/') => true,
        Some(b'*') => target.len() == 1,
        Some(_) => [&b"http://"[..], b"https://"].iter().any(|scheme| {
            let n = target.len().min(scheme.len());
            target[..n].eq_ignore_ascii_case(&scheme[..n])
        }),
    }
}

/// How much of a request line some bytes are.
#[derive(Debug, PartialEq, Eq)]
enum LineScan<'a> {
    /// Not a request line.
    Invalid,
    /// Consistent with a request line up to their end. `version`: the version is whole
    /// (only the line end is missing).
    Prefix {
        method: &'a [u8],
        target: &'a [u8],
        version: bool,
    },
    /// A whole request line, its line end included.
    Complete,
}

/// Check `data` as the start of a request line (no leading empty lines).
fn scan_request_line(data: &[u8]) -> LineScan<'_> {
    let method_len = data.iter().take_while(|&&b| is_tchar(b)).count();
    let method = &data[..method_len];
    let prefix = |target, version| LineScan::Prefix {
        method,
        target,
        version,
    };
    if method_len == data.len() {
        return prefix(&[], false);
    }
    if method_len == 0 || data[method_len] != b' ' || method == b"PRI" {
        return LineScan::Invalid;
    }
    let mut i = method_len;
    while data.get(i) == Some(&b' ') {
        i += 1;
    }
    let start = i;
    while data.get(i).is_some_and(|&b| is_target_byte(b)) {
        i += 1;
    }
    let target = &data[start..i];
    if !target_consistent(method, target) {
        return LineScan::Invalid;
    }
    if i == data.len() {
        return prefix(target, false);
    }
    if target.is_empty() || data[i] != b' ' {
        return LineScan::Invalid;
    }
    while data.get(i) == Some(&b' ') {
        i += 1;
    }
    let version = &data[i..];
    let n = version.len().min(VERSION_START.len());
    if version[..n] != VERSION_START[..n] {
        return LineScan::Invalid;
    }
    match version.get(VERSION_START.len()) {
        None => return prefix(target, false),
        Some(b'0' | b'1') => {}
        Some(_) => return LineScan::Invalid,
    }
    match &version[VERSION_START.len() + 1..] {
        [] | [b'\r'] => prefix(target, true),
        [b'\n', ..] | [b'\r', b'\n', ..] => {
            if method == b"CONNECT" && !target.contains(&b':') {
                LineScan::Invalid
            } else {
                LineScan::Complete
            }
        }
        _ => LineScan::Invalid,
    }
}

/// Length of the empty lines (CR and LF bytes) `data` starts with; `None` past
/// [`MAX_LEADING_BLANK`].
fn leading_blank(data: &[u8]) -> Option<usize> {
    let blank = data
        .iter()
        .take(MAX_LEADING_BLANK + 1)
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    (blank <= MAX_LEADING_BLANK).then_some(blank)
}

/// Look at the first bytes a client sent on a connection (a probe of them: see the module
/// documentation for how a line longer than the probe is decided).
pub fn detect(first: &[u8]) -> Detection {
    if first.starts_with(H2_PREFACE) {
        return Detection::Http2;
    }
    if H2_PREFACE.starts_with(first) {
        // Empty, or a prefix of the preface.
        return Detection::NeedMore;
    }
    let Some(blank) = leading_blank(first) else {
        return Detection::Unknown;
    };
    match scan_request_line(&first[blank..]) {
        LineScan::Complete | LineScan::Prefix { version: true, .. } => Detection::Http1,
        LineScan::Invalid => Detection::Unknown,
        LineScan::Prefix { method, target, .. } => {
            let trusted =
                !target.is_empty() && (target[0] == b'/' || WELL_KNOWN_METHODS.contains(&method));
            if first.len() >= HEURISTIC_BYTES && trusted {
                Detection::Http1
            } else {
                Detection::NeedMore
            }
        }
    }
}

/// Whether a segment begins a new message on this side (used to resynchronise).
fn starts_message(side: Side, data: &[u8]) -> bool {
    match side {
        // A whole request line, or a segment that ends inside one after a well-known
        // method and a space (a short read), with an origin-form target if any.
        Side::Client => leading_blank(data).is_some_and(|blank| {
            let line = &data[blank..];
            match scan_request_line(line) {
                LineScan::Complete | LineScan::Prefix { version: true, .. } => true,
                LineScan::Prefix { method, target, .. } => {
                    line.len() > method.len()
                        && WELL_KNOWN_METHODS.contains(&method)
                        && target.first().is_none_or(|&b| b == b'/')
                }
                LineScan::Invalid => false,
            }
        }),
        // `HTTP/1.x `, or a short read that ends inside it (from `HTTP/` on).
        Side::Server => RESPONSE_STARTS
            .iter()
            .any(|s| data.starts_with(s) || (data.len() >= 5 && s.starts_with(data))),
    }
}

/// Whether a header value (a comma-separated token list) lists `token`, any case.
fn lists_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether some `Upgrade` header lists `h2c`.
fn upgrade_h2c(headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("upgrade") && lists_token(h.value, b"h2c"))
}

/// Where a direction is in its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a message head.
    Head,
    /// In a body delimited by Content-Length: bytes left (> 0).
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// In a chunk's data: bytes left (> 0).
    ChunkData(u64),
    /// Expecting the CRLF after a chunk's data.
    ChunkEnd { seen_cr: bool },
    /// Expecting the trailer section after the last chunk (ends with an empty line).
    Trailers,
    /// In a response body delimited by the connection closing.
    UntilClose,
    /// Client side after a CONNECT, until it is answered: bytes ignored.
    Held,
    /// Lost sync: bytes ignored until a segment starts with a new message.
    Desync,
}

/// One direction of the connection.
struct Direction {
    state: State,
    /// The part of a head / chunk line / trailer section that spans segments.
    buf: BytesMut,
    /// Time of the segment holding the first byte of the head being parsed.
    head_start_ns: u64,
    /// The other side's byte count (kernel's) when that segment was sent, if known.
    head_start_peer: Option<u64>,
}

/// Result of [`Direction::accumulate`].
enum Step<T> {
    /// Complete: the value and how many bytes of the *given* data it used.
    Done(T, usize),
    /// Incomplete: all the given data was buffered.
    Partial,
    /// Sync lost; the buffer is empty again.
    Failed(ParseIssue),
}

/// What a parse function returns: `None` while incomplete, else (bytes used, value).
type ParseResult<T> = Result<Option<(usize, T)>, ParseIssue>;

impl Direction {
    fn new() -> Self {
        Self {
            state: State::Head,
            buf: BytesMut::new(),
            head_start_ns: 0,
            head_start_peer: None,
        }
    }

    fn reset_buf(&mut self) {
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = BytesMut::new();
        } else {
            self.buf.clear();
        }
    }

    /// Parse a head-like unit that may span segments, never buffering more than `max`
    /// bytes. Parses `data` in place when nothing is buffered.
    fn accumulate<T>(
        &mut self,
        data: &[u8],
        max: usize,
        mut parse: impl FnMut(&[u8]) -> ParseResult<T>,
    ) -> Step<T> {
        if self.buf.is_empty() {
            // At most `max` bytes are looked at, so a head is accepted the same way whether
            // or not it arrives in one segment.
            let window = &data[..data.len().min(max)];
            return match parse(window) {
                Ok(Some((used, value))) => Step::Done(value, used),
                Ok(None) if data.len() > max => Step::Failed(ParseIssue::HeadTooLarge),
                Ok(None) => {
                    self.buf.extend_from_slice(data);
                    Step::Partial
                }
                Err(issue) => Step::Failed(issue),
            };
        }
        let old = self.buf.len();
        let take = data.len().min(max.saturating_sub(old));
        let new = &data[..take];
        self.buf.extend_from_slice(new);
        // Everything parsed here ends with a line feed: without a new one, the unit cannot
        // have completed (this keeps tiny segments from re-parsing the buffer each time).
        if new.contains(&b'\n') {
            match parse(&self.buf) {
                Ok(Some((used, value))) => {
                    self.reset_buf();
                    // The buffered prefix was incomplete, so the unit ends in `new`.
                    return Step::Done(value, used.saturating_sub(old));
                }
                Ok(None) => {}
                Err(issue) => {
                    self.reset_buf();
                    return Step::Failed(issue);
                }
            }
        }
        if take < data.len() {
            self.reset_buf();
            Step::Failed(ParseIssue::HeadTooLarge)
        } else {
            Step::Partial
        }
    }
}

/// How a message's body is delimited, from its headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// Neither Transfer-Encoding nor Content-Length.
    Unspecified,
    Length(u64),
    Chunked,
    /// Transfer-Encoding whose final coding is not chunked.
    NotChunked,
    /// Content-Length unparsable or conflicting.
    Invalid,
}

fn framing(headers: &[httparse::Header<'_>]) -> Framing {
    let mut chunked = None;
    let mut length = None;
    let mut invalid = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last header's last coding is the final one.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for part in h.value.split(|&b| b == b',') {
                match parse_u64(part.trim_ascii()) {
                    Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                    _ => invalid = true,
                }
            }
        }
    }
    match (chunked, length) {
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) => Framing::NotChunked,
        (None, _) if invalid => Framing::Invalid,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::Unspecified,
    }
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Run `f` with `n` uninitialised header slots (on the stack when few enough: no
/// allocation and no filling per head).
fn with_uninit_headers<'b, R>(
    n: usize,
    f: impl FnOnce(&mut [MaybeUninit<httparse::Header<'b>>]) -> R,
) -> R {
    if n <= STACK_HEADERS {
        let mut headers = [const { MaybeUninit::uninit() }; STACK_HEADERS];
        f(&mut headers[..n])
    } else {
        let mut headers = Vec::with_capacity(n);
        headers.resize_with(n, MaybeUninit::uninit);
        f(&mut headers)
    }
}

/// Run `f` with `n` empty header slots (on the stack when few enough).
fn with_headers<'b, R>(n: usize, f: impl FnOnce(&mut [httparse::Header<'b>]) -> R) -> R {
    if n <= STACK_HEADERS {
        let mut headers = [httparse::EMPTY_HEADER; STACK_HEADERS];
        f(&mut headers[..n])
    } else {
        let mut headers = vec![httparse::EMPTY_HEADER; n];
        f(&mut headers)
    }
}

fn issue_for(error: httparse::Error) -> ParseIssue {
    match error {
        httparse::Error::TooManyHeaders => ParseIssue::HeadTooLarge,
        _ => ParseIssue::Malformed,
    }
}

/// A complete request head, with what we keep of it.
struct ParsedRequest {
    method: String,
    target: String,
    minor_version: u8,
    headers: Vec<Header>,
    framing: Framing,
    /// It asks to upgrade to HTTP/2 (`Upgrade: h2c`).
    h2c: bool,
}

fn parse_request(
    buf: &[u8],
    config: &httparse::ParserConfig,
    max_headers: usize,
    allowlist: &HeaderAllowlist,
) -> ParseResult<ParsedRequest> {
    with_uninit_headers(max_headers, |slots| {
        let mut req = httparse::Request::new(&mut []);
        match config.parse_request_with_uninit_headers(&mut req, buf, slots) {
            Ok(httparse::Status::Complete(used)) => {
                let headers = req
                    .headers
                    .iter()
                    .filter(|h| allowlist.allows(h.name))
                    .map(|h| Header {
                        name: h.name.to_ascii_lowercase(),
                        value: String::from_utf8_lossy(h.value).into_owned(),
                    })
                    .collect();
                Ok(Some((
                    used,
                    ParsedRequest {
                        method: req.method.unwrap_or_default().to_owned(),
                        target: req.path.unwrap_or_default().to_owned(),
                        minor_version: req.version.unwrap_or_default(),
                        headers,
                        framing: framing(req.headers),
                        h2c: upgrade_h2c(req.headers),
                    },
                )))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(issue_for(e)),
        }
    })
}

/// A complete response head, with what we need of it.
struct ResponseHead {
    status: u16,
    framing: Framing,
    /// Its `Upgrade` header lists `h2c`.
    h2c: bool,
}

fn parse_response(
    buf: &[u8],
    config: &httparse::ParserConfig,
    max_headers: usize,
) -> ParseResult<ResponseHead> {
    with_uninit_headers(max_headers, |slots| {
        let mut res = httparse::Response::new(&mut []);
        match config.parse_response_with_uninit_headers(&mut res, buf, slots) {
            Ok(httparse::Status::Complete(used)) => Ok(Some((
                used,
                ResponseHead {
                    status: res.code.unwrap_or_default(),
                    framing: framing(res.headers),
                    h2c: upgrade_h2c(res.headers),
                },
            ))),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(issue_for(e)),
        }
    })
}

fn parse_chunk_line(buf: &[u8]) -> ParseResult<u64> {
    match httparse::parse_chunk_size(buf) {
        Ok(httparse::Status::Complete((used, size))) => Ok(Some((used, size))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(ParseIssue::Malformed),
    }
}

fn parse_trailers(buf: &[u8], max_headers: usize) -> ParseResult<()> {
    with_headers(max_headers, |slots| {
        match httparse::parse_headers(buf, slots) {
            Ok(httparse::Status::Complete((used, _))) => Ok(Some((used, ()))),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(issue_for(e)),
        }
    })
}

/// A request waiting for its response.
struct RequestInfo {
    method: String,
    target: String,
    minor_version: u8,
    headers: Vec<Header>,
    start_ns: u64,
    end_ns: u64,
    body_bytes: u64,
    /// It asks to upgrade to HTTP/2 (`Upgrade: h2c`).
    h2c: bool,
}

struct Pending {
    seq: u64,
    /// `None`: a request whose head was lost; its response is consumed silently.
    request: Option<RequestInfo>,
    /// When the kernel counted bytes: `own`, the client's stream offset where the head
    /// ended; `peer`, the server's when the head was read.
    stamps: Option<Offsets>,
}

/// HTTP/1.x parser for one connection.
pub struct Http1Parser {
    limits: ParserLimits,
    allowlist: Arc<HeaderAllowlist>,
    request_config: httparse::ParserConfig,
    response_config: httparse::ParserConfig,
    client: Direction,
    server: Direction,
    pending: VecDeque<Pending>,
    next_seq: u64,
    /// The pending request whose chunked body the client side is in.
    client_body_seq: Option<u64>,
    /// The connection left HTTP/1 (101 or CONNECT tunnel): everything is ignored.
    upgraded: bool,
    /// The request a 101 just upgraded to h2c, until `feed` knows where the 101 ended.
    h2c_request: Option<RequestHead>,
    /// The kernel's offsets of the segment being fed, and where in it the current step
    /// starts.
    at: Option<Offsets>,
    pos: usize,
    /// The client's stream offset after the last client bytes fed (or lost).
    seen_client: Option<u64>,
    /// Client bytes holding request heads were lost, and no request was read since: a
    /// response with no request waiting answers one of those.
    unknown_requests: bool,
}

impl Http1Parser {
    pub fn new(limits: ParserLimits, allowlist: Arc<HeaderAllowlist>) -> Self {
        let mut request_config = httparse::ParserConfig::default();
        request_config.allow_multiple_spaces_in_request_line_delimiters(true);
        // Be as lenient as browsers with what servers send.
        let mut response_config = httparse::ParserConfig::default();
        response_config
            .allow_multiple_spaces_in_response_status_delimiters(true)
            .allow_spaces_after_header_name_in_responses(true)
            .allow_obsolete_multiline_headers_in_responses(true)
            .ignore_invalid_headers_in_responses(true);
        Self {
            limits,
            allowlist,
            request_config,
            response_config,
            client: Direction::new(),
            server: Direction::new(),
            pending: VecDeque::new(),
            next_seq: 0,
            client_body_seq: None,
            upgraded: false,
            h2c_request: None,
            at: None,
            pos: 0,
            seen_client: None,
            unknown_requests: false,
        }
    }

    fn dir(&self, side: Side) -> &Direction {
        match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        }
    }

    fn dir_mut(&mut self, side: Side) -> &mut Direction {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// Bytes buffered for one direction (never more than `max_head_bytes`).
    #[cfg(test)]
    fn buffered(&self, side: Side) -> usize {
        self.dir(side).buf.len()
    }

    /// Lose sync on one side; `head_lost` when the bytes lost held (the start of) a head.
    fn lose_sync(
        &mut self,
        side: Side,
        issue: ParseIssue,
        head_lost: bool,
        out: &mut ParserOutput,
    ) {
        out.issues.push(issue);
        let dir = self.dir_mut(side);
        dir.state = State::Desync;
        dir.reset_buf();
        match side {
            Side::Client => {
                self.client_body_seq = None;
                if head_lost {
                    self.push_pending(None, None, out);
                }
            }
            Side::Server => {
                if head_lost {
                    self.take_front();
                }
            }
        }
    }

    /// The body (or trailers) of the current message on `side` is over.
    fn message_done(&mut self, side: Side) {
        self.dir_mut(side).state = State::Head;
        if side == Side::Client {
            self.client_body_seq = None;
        }
    }

    fn push_pending(
        &mut self,
        request: Option<RequestInfo>,
        stamps: Option<Offsets>,
        out: &mut ParserOutput,
    ) -> u64 {
        if self.pending.len() >= self.limits.max_pending.max(1) {
            if let Some(dropped) = self.take_front() {
                if dropped.request.is_some() {
                    out.issues.push(ParseIssue::Unanswered);
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(Pending {
            seq,
            request,
            stamps,
        });
        seq
    }

    fn take_front(&mut self) -> Option<Pending> {
        let front = self.pending.pop_front()?;
        let was_connect = front
            .request
            .as_ref()
            .is_some_and(|r| r.method == "CONNECT");
        if was_connect && self.client.state == State::Held {
            // Answered (or its answer lost): stop holding; resume at the next request.
            self.client.state = State::Desync;
        }
        Some(front)
    }

    fn enter_upgraded(&mut self) {
        self.upgraded = true;
        self.pending.clear();
        self.client_body_seq = None;
        for side in [Side::Client, Side::Server] {
            let dir = self.dir_mut(side);
            dir.state = State::Desync;
            dir.reset_buf();
        }
    }

    /// Handle `data` (non-empty) in state `Head`; returns the bytes used.
    fn head(&mut self, side: Side, ts_ns: u64, data: &[u8], out: &mut ParserOutput) -> usize {
        let max = self.limits.max_head_bytes;
        let max_headers = self.limits.max_headers;
        let peer = self.at.map(|a| a.peer);
        let dir = self.dir_mut(side);
        if dir.buf.is_empty() {
            // Stray line ends between messages are not part of the next head.
            let blank = data
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if blank > 0 {
                return blank;
            }
            dir.head_start_ns = ts_ns;
            dir.head_start_peer = peer;
        }
        match side {
            Side::Client => {
                let config = &self.request_config;
                let allowlist = &self.allowlist;
                let step = self.client.accumulate(data, max, |b| {
                    parse_request(b, config, max_headers, allowlist)
                });
                match step {
                    Step::Done(head, used) => {
                        let stamps = self.at.map(|a| Offsets {
                            own: a.own + (self.pos + used) as u64,
                            peer: a.peer,
                        });
                        self.on_request(head, ts_ns, stamps, out);
                        used
                    }
                    Step::Partial => data.len(),
                    Step::Failed(issue) => {
                        self.lose_sync(side, issue, issue != ParseIssue::Malformed, out);
                        data.len()
                    }
                }
            }
            Side::Server => {
                let config = &self.response_config;
                let step = self
                    .server
                    .accumulate(data, max, |b| parse_response(b, config, max_headers));
                match step {
                    Step::Done(head, used) => {
                        let end = self.at.map(|a| a.own + (self.pos + used) as u64);
                        self.on_response(head, ts_ns, end, out);
                        used
                    }
                    Step::Partial => data.len(),
                    Step::Failed(issue) => {
                        self.lose_sync(side, issue, issue != ParseIssue::Malformed, out);
                        data.len()
                    }
                }
            }
        }
    }

    fn on_request(
        &mut self,
        head: ParsedRequest,
        ts_ns: u64,
        stamps: Option<Offsets>,
        out: &mut ParserOutput,
    ) {
        self.unknown_requests = false;
        let is_connect = head.method == "CONNECT";
        let body_bytes = match head.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let info = RequestInfo {
            method: head.method,
            target: head.target,
            minor_version: head.minor_version,
            headers: head.headers,
            start_ns: self.client.head_start_ns,
            end_ns: ts_ns,
            body_bytes,
            h2c: head.h2c,
        };
        let seq = self.push_pending(Some(info), stamps, out);
        self.client.state = if is_connect {
            State::Held
        } else {
            match head.framing {
                Framing::Unspecified | Framing::Length(0) => State::Head,
                Framing::Length(n) => {
                    Self::body_ahead(Side::Client, stamps.map(|s| s.own), n, out);
                    State::Length(n)
                }
                Framing::Chunked => {
                    self.client_body_seq = Some(seq);
                    State::ChunkSize
                }
                Framing::NotChunked | Framing::Invalid => {
                    // A request body we cannot delimit: the request stays pending.
                    self.lose_sync(Side::Client, ParseIssue::Malformed, false, out);
                    return;
                }
            }
        };
    }

    /// A body of `n` bytes starts at stream offset `start` on `side`: a long one is left
    /// to the kernel to count.
    fn body_ahead(side: Side, start: Option<u64>, n: u64, out: &mut ParserOutput) {
        if let Some(start) = start.filter(|_| n >= SKIP_MIN) {
            out.skips.push((side, start + n));
        }
    }

    fn on_response(
        &mut self,
        head: ResponseHead,
        ts_ns: u64,
        head_end: Option<u64>,
        out: &mut ParserOutput,
    ) {
        let status = head.status;
        if (100..200).contains(&status) && status != 101 {
            // Informational (100 Continue, 103 Early Hints): the final response follows.
            return;
        }
        // The kernel's count of client bytes when this response began to be written: it
        // cannot answer a request whose head ended after that.
        let written_after = self.server.head_start_peer;
        let request = match self.pending.front() {
            Some(Pending {
                stamps: Some(stamps),
                ..
            }) if written_after.is_some_and(|p| p < stamps.own) => {
                // It answers a request that was lost before the oldest one waiting.
                out.lost_exchanges += 1;
                None
            }
            Some(_) => self.take_front().and_then(|p| p.request),
            None => {
                let unseen =
                    matches!((written_after, self.seen_client), (Some(p), Some(c)) if p > c);
                if self.unknown_requests || unseen {
                    // The answer to a request whose bytes were lost.
                    out.lost_exchanges += 1;
                } else {
                    out.issues.push(ParseIssue::UnpairedResponse);
                }
                None
            }
        };
        let request = match request {
            Some(r) if status == 101 && head.h2c && r.h2c => {
                // HTTP/2 from here on: the request is answered on stream 1.
                self.h2c_request = Some(RequestHead {
                    method: r.method,
                    target: r.target,
                    headers: r.headers,
                    start_ns: r.start_ns,
                    end_ns: r.end_ns,
                    body_bytes: r.body_bytes,
                });
                self.enter_upgraded();
                return;
            }
            other => other,
        };
        let method = request.as_ref().map(|r| r.method.as_str());
        let upgrade = status == 101 || (method == Some("CONNECT") && (200..300).contains(&status));
        let no_body = method == Some("HEAD") || status == 204 || status == 304;
        let (body_bytes, next) = if upgrade {
            (None, State::Desync)
        } else if no_body {
            (Some(0), State::Head)
        } else {
            match head.framing {
                Framing::Length(0) => (Some(0), State::Head),
                Framing::Length(n) => (Some(n), State::Length(n)),
                Framing::Chunked => (None, State::ChunkSize),
                Framing::Unspecified | Framing::NotChunked => (None, State::UntilClose),
                Framing::Invalid => (None, State::Desync),
            }
        };
        if let Some(r) = request {
            out.exchanges.push(ParsedExchange {
                protocol: Protocol::Http1,
                method: r.method,
                target: r.target,
                minor_version: r.minor_version,
                status,
                request_headers: r.headers,
                request_start_ns: r.start_ns,
                request_end_ns: r.end_ns,
                response_ns: ts_ns,
                request_body_bytes: r.body_bytes,
                response_body_bytes: body_bytes,
                grpc: None,
            });
        }
        if upgrade {
            out.issues.push(ParseIssue::Upgraded);
            self.enter_upgraded();
        } else if next == State::Desync {
            self.lose_sync(Side::Server, ParseIssue::Malformed, false, out);
        } else {
            if let State::Length(n) = next {
                Self::body_ahead(Side::Server, head_end, n, out);
            }
            self.server.state = next;
        }
    }

    /// Handle `data` (non-empty) in a body or chunk state; returns the bytes used.
    fn body(&mut self, side: Side, data: &[u8], out: &mut ParserOutput) -> usize {
        let max = self.limits.max_head_bytes;
        let max_headers = self.limits.max_headers;
        // The stream offset of `data`, for a chunk whose size is learnt here.
        let here = self.at.map(|a| a.own + self.pos as u64);
        let dir = self.dir_mut(side);
        match dir.state {
            State::Length(left) => {
                let used = left.min(data.len() as u64);
                if used == left {
                    self.message_done(side);
                } else {
                    dir.state = State::Length(left - used);
                }
                // `used <= data.len()`, so it fits a usize.
                used as usize
            }
            State::ChunkData(left) => {
                let used = left.min(data.len() as u64);
                dir.state = if used == left {
                    State::ChunkEnd { seen_cr: false }
                } else {
                    State::ChunkData(left - used)
                };
                used as usize
            }
            State::ChunkSize => match dir.accumulate(data, max, parse_chunk_line) {
                Step::Done(size, used) => {
                    Self::body_ahead(side, here.map(|h| h + used as u64), size, out);
                    dir.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                    if side == Side::Client {
                        self.count_request_chunk(size);
                    }
                    used
                }
                Step::Partial => data.len(),
                Step::Failed(_) => {
                    self.lose_sync(side, ParseIssue::Malformed, false, out);
                    data.len()
                }
            },
            State::ChunkEnd { seen_cr } => match data[0] {
                b'\r' if !seen_cr => {
                    dir.state = State::ChunkEnd { seen_cr: true };
                    1
                }
                b'\n' => {
                    dir.state = State::ChunkSize;
                    1
                }
                _ => {
                    self.lose_sync(side, ParseIssue::Malformed, false, out);
                    data.len()
                }
            },
            State::Trailers => {
                match dir.accumulate(data, max, |b| parse_trailers(b, max_headers)) {
                    Step::Done((), used) => {
                        self.message_done(side);
                        used
                    }
                    Step::Partial => data.len(),
                    Step::Failed(issue) => {
                        self.lose_sync(side, issue, false, out);
                        data.len()
                    }
                }
            }
            State::Head | State::UntilClose | State::Held | State::Desync => data.len(),
        }
    }

    fn count_request_chunk(&mut self, size: u64) {
        let Some(seq) = self.client_body_seq else {
            return;
        };
        if let Some(p) = self.pending.iter_mut().rev().find(|p| p.seq == seq) {
            if let Some(r) = p.request.as_mut() {
                r.body_bytes = r.body_bytes.saturating_add(size);
            }
        }
    }

    /// Let `gap` unseen bytes of `side` count down the body they fall in (Content-Length
    /// left, or chunk data). Returns the bytes left over where something other than body
    /// bytes was expected (a head, a chunk line, trailers, or while out of sync), or
    /// `None` when the gap ends inside a body (or in one delimited by close, or a tunnel).
    fn absorb(&mut self, side: Side, mut gap: u64) -> Option<u64> {
        while gap > 0 {
            let dir = self.dir_mut(side);
            match dir.state {
                State::Length(left) => {
                    if gap < left {
                        dir.state = State::Length(left - gap);
                        return None;
                    }
                    gap -= left;
                    self.message_done(side);
                }
                State::ChunkData(left) => {
                    if gap < left {
                        dir.state = State::ChunkData(left - gap);
                        return None;
                    }
                    gap -= left;
                    dir.state = State::ChunkEnd { seen_cr: false };
                }
                State::UntilClose | State::Held => return None,
                State::Head
                | State::ChunkSize
                | State::ChunkEnd { .. }
                | State::Trailers
                | State::Desync => return Some(gap),
            }
        }
        None
    }

    /// `gap` bytes after the captured data of a segment were not seen.
    fn skip_gap(&mut self, side: Side, gap: u64, out: &mut ParserOutput) {
        if self.absorb(side, gap).is_none() {
            return;
        }
        match self.dir(side).state {
            State::Desync => {}
            // Where a head was expected there is a head (or its rest): lost.
            State::Head => self.lose_sync(side, ParseIssue::Truncated, true, out),
            _ => self.lose_sync(side, ParseIssue::Truncated, false, out),
        }
    }
}

impl Http1Parser {
    /// `gap` bytes that `side` sent were lost before its next segment, which starts at
    /// the stream offset `resume_at` (when the kernel counted it). A gap inside a body
    /// only shortens the body. A gap where heads were expected resynchronises the side,
    /// and the pairing stays right by the kernel's counts rather than by position:
    /// * server bytes lost: every waiting request read before the lost bytes ended may have
    ///   been answered in them, so it is dropped (a lost exchange); requests read after
    ///   stay, for the responses to come;
    /// * client bytes lost: responses that answer the lost requests are recognised when
    ///   they come (written before the oldest waiting request was read, or with none
    ///   waiting) and counted as lost instead of being paired.
    fn lost(&mut self, side: Side, gap: u64, resume_at: Option<u64>, out: &mut ParserOutput) {
        if self.absorb(side, gap).is_none() {
            return;
        }
        if self.dir(side).state != State::Desync {
            self.lose_sync(side, ParseIssue::Lost, false, out);
        }
        match side {
            Side::Client => self.unknown_requests = true,
            Side::Server => match resume_at {
                // A placeholder (no counts) may have been answered in the gap too.
                Some(end) => self.drop_answered_before(end, true, out),
                None => {
                    // Without the kernel's counts, the oldest request is the likeliest answered.
                    if self.take_front().is_some_and(|p| p.request.is_some()) {
                        out.lost_exchanges += 1;
                    }
                }
            },
        }
    }
}

impl Http1Parser {
    /// Server bytes up to stream offset `at` were not parsed (lost, or skipped out of
    /// sync): a waiting request read before the server had written `at` bytes was
    /// answered (as a rule, one request at a time) by a response that began in them, and
    /// is dropped as a lost exchange. `unstamped`: also drop the waiting entries without
    /// the kernel's counts.
    fn drop_answered_before(&mut self, at: u64, unstamped: bool, out: &mut ParserOutput) {
        while let Some(front) = self.pending.front() {
            let answered = match front.stamps {
                Some(s) => s.peer < at,
                None => unstamped,
            };
            if !answered {
                break;
            }
            if self.take_front().is_some_and(|p| p.request.is_some()) {
                out.lost_exchanges += 1;
            }
        }
    }
}

impl StreamParser for Http1Parser {
    fn protocol(&self) -> Protocol {
        Protocol::Http1
    }

    fn feed(&mut self, side: Side, segment: Segment<'_>, out: &mut ParserOutput) {
        if self.upgraded {
            return;
        }
        self.at = segment.at;
        if segment.lost_before > 0 {
            self.lost(side, segment.lost_before, segment.at.map(|a| a.own), out);
        }
        if let (Side::Client, Some(at)) = (side, segment.at) {
            self.seen_client = Some(at.own + segment.len);
        }
        let data = segment.data;
        let gap = segment.len.saturating_sub(data.len() as u64);
        let dir = self.dir_mut(side);
        if dir.state == State::Desync {
            if !starts_message(side, data) {
                return;
            }
            dir.state = State::Head;
            dir.reset_buf();
            if let (Side::Server, Some(at)) = (side, segment.at) {
                self.drop_answered_before(at.own, false, out);
            }
        }
        let mut pos = 0;
        while pos < data.len() && !self.upgraded {
            self.pos = pos;
            let rest = &data[pos..];
            let used = match self.dir(side).state {
                State::Head => self.head(side, segment.ts_ns, rest, out),
                State::UntilClose | State::Held | State::Desync => rest.len(),
                _ => self.body(side, rest, out),
            };
            if used == 0 {
                // Cannot happen (every step consumes or fails); never spin on it.
                debug_assert!(false, "h1 parser made no progress");
                self.lose_sync(side, ParseIssue::Malformed, false, out);
                break;
            }
            pos += used;
            if let Some(request) = self.h2c_request.take() {
                // The 101 head ended at `pos`: the server's HTTP/2 bytes start there.
                out.h2c = Some(H2cUpgrade {
                    request,
                    offset: pos,
                });
            }
        }
        if gap > 0 && !self.upgraded {
            self.skip_gap(side, gap, out);
        }
    }

    fn finish(&mut self, _ts_ns: u64, out: &mut ParserOutput) {
        if !self.upgraded {
            for side in [Side::Client, Side::Server] {
                let dir = self.dir(side);
                if dir.state == State::Head && !dir.buf.is_empty() {
                    out.issues.push(ParseIssue::Truncated);
                }
            }
            for p in self.pending.drain(..) {
                if p.request.is_some() {
                    out.issues.push(ParseIssue::Unanswered);
                }
            }
        }
        // A body delimited by close ends here; nothing else is waited for.
        self.pending.clear();
        self.client = Direction::new();
        self.server = Direction::new();
        self.client_body_seq = None;
        self.upgraded = false;
        self.h2c_request = None;
        self.seen_client = None;
        self.unknown_requests = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> Http1Parser {
        Http1Parser::new(
            ParserLimits::default(),
            Arc::new(HeaderAllowlist::default()),
        )
    }

    /// Feed one fully captured segment.
    fn feed(p: &mut Http1Parser, side: Side, ts_ns: u64, data: &[u8]) -> ParserOutput {
        feed_gap(p, side, ts_ns, data, data.len() as u64)
    }

    /// Feed one segment of `len` bytes of which only `data` was captured.
    fn feed_gap(
        p: &mut Http1Parser,
        side: Side,
        ts_ns: u64,
        data: &[u8],
        len: u64,
    ) -> ParserOutput {
        let mut out = ParserOutput::default();
        p.feed(
            side,
            Segment {
                ts_ns,
                data,
                len,
                ..Default::default()
            },
            &mut out,
        );
        out
    }

    fn finish(p: &mut Http1Parser, ts_ns: u64) -> ParserOutput {
        let mut out = ParserOutput::default();
        p.finish(ts_ns, &mut out);
        out
    }

    fn hdr(name: &str, value: &str) -> Header {
        Header {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }

    fn exchange(method: &str, target: &str, status: u16) -> ParsedExchange {
        ParsedExchange {
            protocol: Protocol::Http1,
            method: method.to_owned(),
            target: target.to_owned(),
            minor_version: 1,
            status,
            request_headers: Vec::new(),
            request_start_ns: 0,
            request_end_ns: 0,
            response_ns: 0,
            request_body_bytes: 0,
            response_body_bytes: Some(0),
            grpc: None,
        }
    }

    /// Sequence of (method, target, status) of a list of exchanges.
    fn summary(exchanges: &[ParsedExchange]) -> Vec<(String, String, u16)> {
        exchanges
            .iter()
            .map(|e| (e.method.clone(), e.target.clone(), e.status))
            .collect()
    }

    fn s(method: &str, target: &str, status: u16) -> (String, String, u16) {
        (method.to_owned(), target.to_owned(), status)
    }

    const OK_EMPTY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn detect_cases() {
        assert_eq!(detect(b""), Detection::NeedMore);
        assert_eq!(detect(b"G"), Detection::NeedMore);
        assert_eq!(detect(b"GE"), Detection::NeedMore);
        assert_eq!(detect(b"GET"), Detection::NeedMore);
        assert_eq!(detect(b"GET "), Detection::NeedMore);
        assert_eq!(detect(b"GET /"), Detection::NeedMore);
        assert_eq!(detect(b"GET / HTTP/1."), Detection::NeedMore);
        // The version decides, with or without the line end.
        assert_eq!(detect(b"GET / HTTP/1.1"), Detection::Http1);
        assert_eq!(detect(b"GET / HTTP/1.1\r"), Detection::Http1);
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detection::Http1);
        assert_eq!(detect(b"GET / HTTP/1.1\n"), Detection::Http1);
        assert_eq!(detect(b"HEAD / HTTP/1.1\r\n"), Detection::Http1);
        assert_eq!(detect(b"POST /x HTTP/1.0\r\n"), Detection::Http1);
        assert_eq!(detect(b"OPTIONS * HTTP/1.1\r\n"), Detection::Http1);
        assert_eq!(
            detect(b"CONNECT example.com:443 HTTP/1.1\r\n"),
            Detection::Http1
        );
        assert_eq!(detect(b"CONNECT [::1]:443 HTTP/1.1\r\n"), Detection::Http1);
        assert_eq!(detect(b"GET http://h/ HTTP/1.1\r\n"), Detection::Http1);
        assert_eq!(detect(b"GET HTTPS://h/ HTTP/1.1\r\n"), Detection::Http1);
        // Repeated spaces are accepted, as the parser accepts them.
        assert_eq!(detect(b"GET  /  HTTP/1.1\r\n"), Detection::Http1);
        // Not a request line.
        assert_eq!(detect(b"GET/ HTTP/1.1"), Detection::Unknown);
        assert_eq!(detect(b"GET / HTTP/1.2"), Detection::Unknown);
        assert_eq!(detect(b"GET / HTTP/2.0"), Detection::Unknown);
        assert_eq!(detect(b"GET / http/1.1"), Detection::Unknown);
        assert_eq!(detect(b"GET / HTTP/1.1 \r\n"), Detection::Unknown);
        assert_eq!(detect(b"GET / HTTP/1.1\rX"), Detection::Unknown);
        assert_eq!(detect(b"GET /\tHTTP/1.1"), Detection::Unknown);
        assert_eq!(detect(b"GET \r\n"), Detection::Unknown);
        assert_eq!(detect(b"GET x HTTP/1.1"), Detection::Unknown);
        assert_eq!(detect(b"GET ftp://h/ HTTP/1.1"), Detection::Unknown);
        assert_eq!(detect(b"GET *x HTTP/1.1"), Detection::Unknown);
        assert_eq!(detect(b"GET host:80 HTTP/1.1"), Detection::Unknown);
        assert_eq!(detect(b"CONNECT /x HTTP/1.1"), Detection::Unknown);
        assert_eq!(detect(b"CONNECT host HTTP/1.1\r\n"), Detection::Unknown);
        // HTTP/2 preface, and its prefixes; `PRI` is no HTTP/1 method.
        assert_eq!(
            detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Detection::Http2
        );
        assert_eq!(detect(b"PRI * HTTP/2.0"), Detection::Http2);
        assert_eq!(detect(b"P"), Detection::NeedMore);
        assert_eq!(detect(b"PRI"), Detection::NeedMore);
        assert_eq!(detect(b"PRI * HTTP/2"), Detection::NeedMore);
        assert_eq!(detect(b"PRI * HTTP/1.1"), Detection::Unknown);
        assert_eq!(detect(b"PRI / HTTP/1.1\r\n"), Detection::Unknown);
        // TLS ClientHello, binary, other text protocols.
        assert_eq!(
            detect(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]),
            Detection::Unknown
        );
        assert_eq!(detect(&[0x16]), Detection::Unknown);
        assert_eq!(detect(&[0x00, 0xff, 0x10]), Detection::Unknown);
        assert_eq!(detect(b"SSH-2.0-OpenSSH_9.6\r\n"), Detection::Unknown);
        assert_eq!(detect(b"*1\r\n$4\r\nPING\r\n"), Detection::Unknown);
        assert_eq!(detect(b"PING\r\n"), Detection::Unknown);
        assert_eq!(detect(b"get key\r\n"), Detection::Unknown);
    }

    #[test]
    fn detect_any_method_token() {
        // RFC 9110 §9.1: a method is a token; case matters but any case is a token.
        for line in [
            &b"PURGE /cache/x HTTP/1.1\r\n"[..],
            b"M-SEARCH * HTTP/1.1\r\n",
            b"NOTIFY * HTTP/1.1\r\n",
            b"FOO / HTTP/1.1\r\n",
            b"get / HTTP/1.1\r\n",
            b"GETX / HTTP/1.0\r\n",
            b"X!#$%&'*+-.^_`|~9 /a HTTP/1.1\r\n",
            b"BREW http://pot/ HTTP/1.1\r\n",
        ] {
            assert_eq!(detect(line), Detection::Http1, "{}", line.escape_ascii());
            assert!(starts_message(Side::Client, line));
        }
        assert_eq!(detect(b"PURGE"), Detection::NeedMore);
        assert_eq!(detect(b"M-SEARCH * HTTP"), Detection::NeedMore);
        // Not tchar.
        assert_eq!(detect(b"GE(T / HTTP/1.1"), Detection::Unknown);
        assert_eq!(detect(b"G\"T / HTTP/1.1"), Detection::Unknown);
        assert_eq!(detect(b" GET / HTTP/1.1"), Detection::Unknown);
    }

    #[test]
    fn detect_line_longer_than_probe() {
        // The connection stage may hand over only 24 bytes; the version is beyond them.
        let probe = |line: &[u8]| detect(&line[..HEURISTIC_BYTES]);
        assert_eq!(
            probe(b"GET /api/v1/users/1234567890 HTTP/1.1\r\n"),
            Detection::Http1
        );
        assert_eq!(
            probe(b"PURGE /cache/some/long/path HTTP/1.1\r\n"),
            Detection::Http1
        );
        assert_eq!(
            probe(b"GET http://proxy.example/some/path HTTP/1.1\r\n"),
            Detection::Http1
        );
        assert_eq!(
            probe(b"CONNECT very-long-host-name.example:443 HTTP/1.1\r\n"),
            Detection::Http1
        );
        // A custom method with a target that is not origin-form: not decidable from the
        // probe (the stage gives up when its budget is spent).
        assert_eq!(
            probe(b"CUSTOM http://proxy.example/some/path HTTP/1.1\r\n"),
            Detection::NeedMore
        );
        // Shorter than the heuristic needs: wait.
        assert_eq!(detect(b"GET /api/v1/users/12"), Detection::NeedMore);
        // Inconsistent bytes are decided at once, long or short.
        assert_eq!(
            probe(b"DESCRIBE rtsp://media.example/stream RTSP/1.0\r\n"),
            Detection::Unknown
        );
        assert_eq!(
            probe(b"GET /a\x01bcdefghijklmnopqrstuvwxyz"),
            Detection::Unknown
        );
        assert_eq!(probe(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"), Detection::NeedMore);
        // With a larger probe the whole line is checked, whatever its length.
        let long = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(200));
        assert_eq!(detect(long.as_bytes()), Detection::Http1);
        let long = format!("SOURCE /{} ICE/1.0\r\n", "a".repeat(100));
        assert_eq!(detect(long.as_bytes()), Detection::Unknown);
    }

    #[test]
    fn detect_skips_leading_empty_lines() {
        assert_eq!(
            detect(b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"),
            Detection::Http1
        );
        assert_eq!(detect(b"\nGET / HTTP/1.1\n"), Detection::Http1);
        assert_eq!(detect(b"\r\n"), Detection::NeedMore);
        assert_eq!(detect(b"\r\n\r\nGE"), Detection::NeedMore);
        assert_eq!(detect(b"\r\n\r\nSSH-2.0-x\r\n"), Detection::Unknown);
        // Blank bytes count toward the probe; the heuristic still applies after them.
        assert_eq!(
            detect(&b"\r\n\r\nGET /api/v1/users/1234567890 HTTP/1.1"[..HEURISTIC_BYTES]),
            Detection::Http1
        );
        // Bounded.
        let mut many = b"\r\n".repeat(MAX_LEADING_BLANK / 2 + 1);
        many.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(detect(&many), Detection::Unknown);
        assert!(!starts_message(Side::Client, &many));
        assert!(starts_message(Side::Client, b"\r\nGET / HTTP/1.1\r\n"));

        // The parser yields the exchange after the empty lines, fed whole or split.
        for split in [0, 2, 4, 7] {
            let mut p = parser();
            let req = b"\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n";
            let (a, b) = req.split_at(split);
            let mut issues = Vec::new();
            if !a.is_empty() {
                issues.extend(feed(&mut p, Side::Client, 1, a).issues);
            }
            issues.extend(feed(&mut p, Side::Client, 2, b).issues);
            let out = feed(&mut p, Side::Server, 3, OK_EMPTY);
            issues.extend(out.issues);
            assert!(issues.is_empty(), "split {split}: {issues:?}");
            assert_eq!(summary(&out.exchanges), vec![s("GET", "/x", 200)]);
        }
    }

    #[test]
    fn look_alike_protocols_are_unknown() {
        for first in [
            // RTSP (RFC 2326 / 7826).
            &b"OPTIONS rtsp://h/x RTSP/1.0\r\nCSeq: 1\r\n\r\n"[..],
            b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n",
            b"DESCRIBE rtsp://h/x RTSP/1.0\r\n",
            b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n",
            // Icecast source clients.
            b"SOURCE /mount ICE/1.0\r\n",
            b"SOURCE /mount HTTP/1.2\r\n",
            // SIP (RFC 3261).
            b"INVITE sip:bob@x SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n",
            b"REGISTER sip:x SIP/2.0\r\n",
            b"OPTIONS sip:x SIP/2.0\r\n",
            // HTTP/0.9: no version.
            b"GET /\r\n",
            b"GET /index.html\n",
        ] {
            assert_eq!(
                detect(first),
                Detection::Unknown,
                "{}",
                first.escape_ascii()
            );
            assert!(!starts_message(Side::Client, first));
        }
        assert!(!starts_message(Side::Server, b"RTSP/1.0 200 OK\r\n\r\n"));
        assert!(!starts_message(Side::Server, b"HTTP/1.2 200 OK\r\n\r\n"));
        assert!(starts_message(Side::Server, b"HTTP/1.0 200 OK\r\n\r\n"));

        // On an HTTP/1 connection, a later RTSP request line is malformed, not an exchange.
        let mut p = parser();
        let out = feed(
            &mut p,
            Side::Client,
            1,
            b"GET / HTTP/1.1\r\n\r\nOPTIONS rtsp://h/x RTSP/1.0\r\nCSeq: 2\r\n\r\n",
        );
        assert_eq!(out.issues, vec![ParseIssue::Malformed]);
        let out = feed(&mut p, Side::Server, 2, OK_EMPTY);
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/", 200)]);
        // Its RTSP answer never pairs.
        let out = feed(
            &mut p,
            Side::Server,
            3,
            b"RTSP/1.0 200 OK\r\nCSeq: 2\r\n\r\n",
        );
        assert_eq!(out.issues, vec![ParseIssue::Malformed]);
        assert!(out.exchanges.is_empty());
        // Nor does a resync happen on an RTSP line or an HTTP/0.9 one.
        for line in [&b"OPTIONS * RTSP/1.0\r\n\r\n"[..], b"GET /\r\n"] {
            let out = feed(&mut p, Side::Client, 4, line);
            assert!(out.issues.is_empty() && out.exchanges.is_empty());
        }
        assert!(finish(&mut p, 5).issues.is_empty());

        // A response side starting with RTSP never pairs with a pending request.
        let mut p = parser();
        feed(&mut p, Side::Client, 1, b"GET / HTTP/1.1\r\n\r\n");
        let out = feed(&mut p, Side::Server, 2, b"RTSP/1.0 200 OK\r\n\r\n");
        assert_eq!(out.issues, vec![ParseIssue::Malformed]);
        assert!(out.exchanges.is_empty());
        // HTTP/0.9 request on an HTTP/1 connection: malformed.
        let mut p = parser();
        let out = feed(&mut p, Side::Client, 1, b"GET /\r\n\r\n");
        assert_eq!(out.issues, vec![ParseIssue::Malformed]);
    }

    #[test]
    fn custom_methods_parse_and_resync() {
        let mut p = parser();
        let out = feed(
            &mut p,
            Side::Client,
            1,
            b"PURGE /cache/x HTTP/1.1\r\nHost: h\r\n\r\nM-SEARCH * HTTP/1.1\r\nHost: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\n\r\n",
        );
        assert!(out.issues.is_empty());
        let out = feed(
            &mut p,
            Side::Server,
            2,
            b"HTTP/1.1 200 Purged\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(out.issues.is_empty());
        assert_eq!(
            summary(&out.exchanges),
            vec![s("PURGE", "/cache/x", 200), s("M-SEARCH", "*", 200)]
        );
        // After a loss, a segment starting with a custom method's request line resyncs…
        let out = feed(&mut p, Side::Client, 3, b"\x00garbage\r\n\r\n");
        assert_eq!(out.issues, vec![ParseIssue::Malformed]);
        // …but not on a partial line, nor one without a version.
        for part in [&b"PURGE /cache/y HTTP/1."[..], b"PURGE /cache/y\r\n"] {
            let out = feed(&mut p, Side::Client, 4, part);
            assert!(out.issues.is_empty());
        }
        let out = feed(&mut p, Side::Client, 5, b"PURGE /cache/z HTTP/1.1\r\n\r\n");
        assert!(out.issues.is_empty());
        let out = feed(&mut p, Side::Server, 6, OK_EMPTY);
        assert_eq!(summary(&out.exchanges), vec![s("PURGE", "/cache/z", 200)]);
    }

    #[test]
    fn simple_get() {
        let mut p = parser();
        assert_eq!(p.protocol(), Protocol::Http1);
        let out = feed(
            &mut p,
            Side::Client,
            100,
            b"GET /api/v1/users?id=7 HTTP/1.1\r\nHost: api.example\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
        );
        assert!(out.exchanges.is_empty());
        assert!(out.issues.is_empty());
        let out = feed(
            &mut p,
            Side::Server,
            250,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        );
        assert!(out.issues.is_empty());
        assert_eq!(
            out.exchanges,
            vec![ParsedExchange {
                request_headers: vec![hdr("host", "api.example"), hdr("user-agent", "curl/8")],
                request_start_ns: 100,
                request_end_ns: 100,
                response_ns: 250,
                response_body_bytes: Some(2),
                grpc: None,
                ..exchange("GET", "/api/v1/users?id=7", 200)
            }]
        );
        let out = finish(&mut p, 300);
        assert!(out.exchanges.is_empty());
        assert!(out.issues.is_empty());
    }

    #[test]
    fn keep_alive_three_exchanges() {
        let mut p = parser();
        for i in 0..3u64 {
            let req = format!("GET /item/{i} HTTP/1.1\r\nHost: h\r\n\r\n");
            let out = feed(&mut p, Side::Client, 10 * i, req.as_bytes());
            assert!(out.exchanges.is_empty() && out.issues.is_empty());
            let res = format!("HTTP/1.1 20{i} X\r\nContent-Length: 5\r\n\r\nhello");
            let out = feed(&mut p, Side::Server, 10 * i + 5, res.as_bytes());
            assert!(out.issues.is_empty());
            assert_eq!(
                out.exchanges,
                vec![ParsedExchange {
                    request_headers: vec![hdr("host", "h")],
                    request_start_ns: 10 * i,
                    request_end_ns: 10 * i,
                    response_ns: 10 * i + 5,
                    response_body_bytes: Some(5),
                    grpc: None,
                    ..exchange("GET", &format!("/item/{i}"), 200 + i as u16)
                }]
            );
        }
        assert!(finish(&mut p, 100).issues.is_empty());
    }

    #[test]
    fn pipelined_requests_pair_in_order() {
        let mut p = parser();
        let reqs = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcDELETE /c HTTP/1.1\r\nHost: h\r\n\r\n";
        let out = feed(&mut p, Side::Client, 1, reqs);
        assert!(out.exchanges.is_empty() && out.issues.is_empty());
        let resps = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop";
        let out = feed(&mut p, Side::Server, 2, resps);
        assert!(out.issues.is_empty());
        assert_eq!(
            summary(&out.exchanges),
            vec![
                s("GET", "/a", 200),
                s("POST", "/b", 201),
                s("DELETE", "/c", 404)
            ]
        );
        assert_eq!(
            out.exchanges
                .iter()
                .map(|e| (e.request_body_bytes, e.response_body_bytes))
                .collect::<Vec<_>>(),
            vec![(0, Some(1)), (3, Some(0)), (0, Some(3))]
        );
        assert!(out
            .exchanges
            .iter()
            .all(|e| e.request_start_ns == 1 && e.request_end_ns == 1 && e.response_ns == 2));
        assert!(finish(&mut p, 3).issues.is_empty());
    }

    #[test]
    fn split_byte_by_byte() {
        let mut p = parser();
        let req = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nbody";
        for (i, b) in req.iter().enumerate() {
            let out = feed(
                &mut p,
                Side::Client,
                1000 + i as u64,
                std::slice::from_ref(b),
            );
            assert!(out.exchanges.is_empty() && out.issues.is_empty());
        }
        let res = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let head_end = res.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut exchanges = Vec::new();
        for (i, b) in res.iter().enumerate() {
            let out = feed(
                &mut p,
                Side::Server,
                5000 + i as u64,
                std::slice::from_ref(b),
            );
            assert!(out.issues.is_empty());
            if !out.exchanges.is_empty() {
                // Emitted exactly when the response head completes.
                assert_eq!(i + 1, head_end);
            }
            exchanges.extend(out.exchanges);
        }
        let head_len = req.len() - 4;
        assert_eq!(
            exchanges,
            vec![ParsedExchange {
                request_headers: vec![hdr("host", "h"), hdr("content-type", "text/plain")],
                request_start_ns: 1000,
                request_end_ns: 1000 + head_len as u64 - 1,
                response_ns: 5000 + head_end as u64 - 1,
                request_body_bytes: 4,
                response_body_bytes: None,
                grpc: None,
                ..exchange("POST", "/upload", 200)
            }]
        );
        // Both directions are back at a message boundary.
        assert_eq!(p.buffered(Side::Client), 0);
        assert_eq!(p.buffered(Side::Server), 0);
        let out = feed(&mut p, Side::Client, 9000, b"GET /next HTTP/1.1\r\n\r\n");
        assert!(out.issues.is_empty());
        let out = feed(&mut p, Side::Server, 9001, OK_EMPTY);
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/next", 200)]);
    }

    #[test]
    fn content_length_request_body_in_segments() {
        let mut p = parser();
        let out = feed(
            &mut p,
            Side::Client,
            1,
            b"PUT /doc HTTP/1.1\r\nContent-Length: 26\r\n\r\nabcdef",
        );
        assert!(out.issues.is_empty());
        for (i, part) in [&b"ghijklmnop"[..], b"qrstu", b"vwxyz"].iter().enumerate() {
            let out = feed(&mut p, Side::Client, 2 + i as u64, part);
            assert!(out.issues.is_empty() && out.exchanges.is_empty());
        }
        // The body is over: the next bytes are a new request.
        let out = feed(&mut p, Side::Client, 10, b"GET /after HTTP/1.1\r\n\r\n");
        assert!(out.issues.is_empty());
        let out = feed(
            &mut p,
            Side::Server,
            11,
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(out.issues.is_empty());
        assert_eq!(
            out.exchanges,
            vec![
                ParsedExchange {
                    request_start_ns: 1,
                    request_end_ns: 1,
                    response_ns: 11,
                    request_body_bytes: 26,
                    ..exchange("PUT", "/doc", 204)
                },
                ParsedExchange {
                    request_start_ns: 10,
                    request_end_ns: 10,
                    response_ns: 11,
                    ..exchange("GET", "/after", 200)
                },
            ]
        );
    }

    #[test]
    fn chunked_request_and_response_with_trailers() {
        let mut p = parser();
        // Chunk sizes, extensions, CRLFs and trailers split at awkward places.
        let client: &[&[u8]] = &[
            b"POST /stream HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1",
            b"0\r\n0123456789",
            b"ABCDEF\r",
            b"\n5;name=val",
            b"ue\r\nhello\r\n",
            b"0\r\nX-Checksum: ab",
            b"cd\r\n",
            b"\r\nGET /second HTTP/1.1\r\n\r\n",
        ];
        for (i, part) in client.iter().enumerate() {
            let out = feed(&mut p, Side::Client, i as u64, part);
            assert!(out.issues.is_empty(), "client part {i}: {:?}", out.issues);
            assert!(out.exchanges.is_empty());
        }
        let server: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"a\r\n0123",
            b"456789\r\n1",
            b"2\r\n",
            b"0123456789abcdefgh\r\n0\r",
            b"\nTrailer-One: 1\r\nTrailer-Two: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ];
        let mut exchanges = Vec::new();
        for (i, part) in server.iter().enumerate() {
            let out = feed(&mut p, Side::Server, 100 + i as u64, part);
            assert!(out.issues.is_empty(), "server part {i}: {:?}", out.issues);
            exchanges.extend(out.exchanges);
        }
        assert_eq!(
            exchanges,
            vec![
                ParsedExchange {
                    request_headers: vec![hdr("host", "h")],
                    request_start_ns: 0,
                    request_end_ns: 0,
                    response_ns: 100,
                    request_body_bytes: 16 + 5,
                    response_body_bytes: None,
                    grpc: None,
                    ..exchange("POST", "/stream", 200)
                },
                ParsedExchange {
                    request_start_ns: 7,
                    request_end_ns: 7,
                    response_ns: 106,
                    response_body_bytes: Some(2),
                    grpc: None,
                    ..exchange("GET", "/second", 200)
                },
            ]
        );
        assert!(finish(&mut p, 200).issues.is_empty());
    }

    #[test]
    fn chunked_data_in_gap() {
        let mut p = parser();
        feed(&mut p, Side::Client, 1, b"GET /big HTTP/1.1\r\n\r\n");
        let out = feed(
            &mut p,
            Side::Server,
            2,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/big", 200)]);
        // A 64 KiB chunk of which only its size line and 10 bytes were captured.
        let out = feed_gap(&mut p, Side::Server, 3, b"10000\r\n0123456789", 7 + 0x10000);
        assert!(out.issues.is_empty());
        let out = feed(&mut p, Side::Server, 4, b"\r\n0\r\n\r\n");
        assert!(out.issues.is_empty());
        feed(&mut p, Side::Client, 5, b"GET /small HTTP/1.1\r\n\r\n");
        let out = feed(&mut p, Side::Server, 6, OK_EMPTY);
        assert!(out.issues.is_empty());
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/small", 200)]);
    }

    #[test]
    fn body_mostly_in_gap() {
        let mut p = parser();
        const MIB: u64 = 1 << 20;
        let head = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 1048576\r\n\r\n";
        let mut data = head.to_vec();
        data.extend_from_slice(&[b'x'; 100]);
        let out = feed_gap(&mut p, Side::Client, 10, &data, head.len() as u64 + MIB);
        assert!(out.issues.is_empty() && out.exchanges.is_empty());
        let out = feed(
            &mut p,
            Side::Client,
            20,
            b"GET /status HTTP/1.1\r\nHost: h\r\n\r\n",
        );
        assert!(out.issues.is_empty());
        // The response to the upload, its 1 MiB body mostly uncaptured, then the next one.
        let res_head = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
        let mut res = res_head.to_vec();
        res.extend_from_slice(&[b'y'; 100]);
        let out = feed_gap(&mut p, Side::Server, 30, &res, res_head.len() as u64 + MIB);
        assert!(out.issues.is_empty());
        assert_eq!(
            out.exchanges,
            vec![ParsedExchange {
                request_headers: vec![hdr("host", "h")],
                request_start_ns: 10,
                request_end_ns: 10,
                response_ns: 30,
                request_body_bytes: MIB,
                response_body_bytes: Some(MIB),
                grpc: None,
                ..exchange("POST", "/upload", 200)
            }]
        );
        let out = feed(
            &mut p,
            Side::Server,
            40,
            b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy",
        );
        assert!(out.issues.is_empty());
        assert_eq!(
            out.exchanges,
            vec![ParsedExchange {
                request_headers: vec![hdr("host", "h")],
                request_start_ns: 20,
                request_end_ns: 20,
                response_ns: 40,
                response_body_bytes: Some(4),
                ..exchange("GET", "/status", 503)
            }]
        );
        // Several segments, each mostly a gap, through one body.
        feed(&mut p, Side::Client, 50, b"GET /x HTTP/1.1\r\n\r\n");
        feed(
            &mut p,
            Side::Server,
            51,
            b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n",
        );
        for i in 0..3 {
            let out = feed_gap(&mut p, Side::Server, 52 + i, b"zz", 1000);
            assert!(out.issues.is_empty());
        }
        feed(&mut p, Side::Client, 60, b"GET /y HTTP/1.1\r\n\r\n");
        let out = feed(&mut p, Side::Server, 61, OK_EMPTY);
        assert!(out.issues.is_empty());
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/y", 200)]);
    }

    #[test]
    fn head_response_has_no_body() {
        let mut p = parser();
        feed(
            &mut p,
            Side::Client,
            1,
            b"HEAD /file HTTP/1.1\r\nHost: h\r\n\r\nGET /file HTTP/1.1\r\nHost: h\r\n\r\n",
        );
        let out = feed(
            &mut p,
            Side::Server,
            2,
            b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n",
        );
        assert!(out.issues.is_empty());
        assert_eq!(summary(&out.exchanges), vec![s("HEAD", "/file", 200)]);
        assert_eq!(out.exchanges[0].response_body_bytes, Some(0));
        // The next bytes are the next response, not a body.
        let out = feed(
            &mut p,
            Side::Server,
            3,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert!(out.issues.is_empty());
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/file", 200)]);
        assert_eq!(out.exchanges[0].response_body_bytes, Some(5));
        assert!(finish(&mut p, 4).issues.is_empty());
    }

    #[test]
    fn no_body_statuses_204_304() {
        let mut p = parser();
        feed(
            &mut p,
            Side::Client,
            1,
            b"DELETE /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nIf-None-Match: \"x\"\r\n\r\nGET /c HTTP/1.1\r\n\r\n",
        );
        // 304 may carry the Content-Length of the representation; neither has a body.
        let out = feed(
            &mut p,
            Side::Server,
            2,
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 999\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        );
        assert!(out.issues.is_empty());
        assert_eq!(
            summary(&out.exchanges),
            vec![
                s("DELETE", "/a", 204),
                s("GET", "/b", 304),
                s("GET", "/c", 200)
            ]
        );
        assert_eq!(
            out.exchanges
                .iter()
                .map(|e| e.response_body_bytes)
                .collect::<Vec<_>>(),
            vec![Some(0), Some(0), Some(2)]
        );
    }

    #[test]
    fn expect_100_continue() {
        let mut p = parser();
        let out = feed(
            &mut p,
            Side::Client,
            1,
            b"POST /submit HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n",
        );
        assert!(out.issues.is_empty());
        let out = feed(&mut p, Side::Server, 2, b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(out.issues.is_empty() && out.exchanges.is_empty());
        let out = feed(&mut p, Side::Client, 3, b"0123456789");
        assert!(out.issues.is_empty());
        let out = feed(
            &mut p,
            Side::Server,
            4,
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(out.issues.is_empty());
        assert_eq!(
            out.exchanges,
            vec![ParsedExchange {
                request_headers: vec![hdr("host", "h")],
                request_start_ns: 1,
                request_end_ns: 1,
                response_ns: 4,
                request_body_bytes: 10,
                ..exchange("POST", "/submit", 201)
            }]
        );
        // 100 and the final response in one segment; 103 Early Hints also skipped.
        feed(
            &mut p,
            Side::Client,
            5,
            b"PUT /x HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
        );
        let out = feed(&mut p, Side::Server, 6, b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(out.exchanges.is_empty());
        feed(&mut p, Side::Client, 7, b"ok");
        let out = feed(
            &mut p,
            Side::Server,
            8,
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(out.issues.is_empty());
        assert_eq!(summary(&out.exchanges), vec![s("PUT", "/x", 200)]);
        assert!(finish(&mut p, 9).issues.is_empty());
    }

    #[test]
    fn upgrade_101_stops_parsing() {
        let mut p = parser();
        feed(
            &mut p,
            Side::Client,
            1,
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        );
        let out = feed(
            &mut p,
            Side::Server,
            2,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello",
        );
        assert_eq!(out.issues, vec![ParseIssue::Upgraded]);
        assert_eq!(
            out.exchanges,
            vec![ParsedExchange {
                request_headers: vec![hdr("host", "h")],
                request_start_ns: 1,
                request_end_ns: 1,
                response_ns: 2,
                response_body_bytes: None,
                ..exchange("GET", "/ws", 101)
            }]
        );
        // WebSocket frames, even ones that look like HTTP, are ignored.
        let out = feed(&mut p, Side::Client, 3, b"\x81\x85abcdefghi");
        assert!(out.issues.is_empty() && out.exchanges.is_empty());
        let out = feed(&mut p, Side::Client, 4, b"GET /fake HTTP/1.1\r\n\r\n");
        assert!(out.issues.is_empty() && out.exchanges.is_empty());
        let out = feed(&mut p, Side::Server, 5, OK_EMPTY);
        assert!(out.issues.is_empty() && out.exchanges.is_empty());
        let out = finish(&mut p, 6);
        assert!(out.issues.is_empty() && out.exchanges.is_empty());
    }

    const H2C_REQUEST: &[u8] = b"POST /rpc HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 3\r\n\r\nabc";
    const H2C_101: &[u8] =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
    /// A server SETTINGS frame (empty), then a PING.
    const H2_FRAMES: &[u8] =
        b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x08\x06\x00\x00\x00\x00\x00HTTP/1.1";

    fn h2c_request_head() -> RequestHead {
        RequestHead {
            method: "POST".to_owned(),
            target: "/rpc".to_owned(),
            headers: vec![hdr("host", "h")],
            start_ns: 1,
            end_ns: 1,
            body_bytes: 3,
        }
    }

    #[test]
    fn h2c_upgrade_frames_in_the_101_segment() {
        let mut p = parser();
        let out = feed(&mut p, Side::Client, 1, H2C_REQUEST);
        assert!(out.issues.is_empty() && out.h2c.is_none());
        // A 100 Continue precedes the 101 in the segment: the offset counts from the
        // segment's start.
        let mut seg = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        seg.extend_from_slice(H2C_101);
        let offset = seg.len();
        seg.extend_from_slice(H2_FRAMES);
        let out = feed(&mut p, Side::Server, 2, &seg);
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        assert!(out.exchanges.is_empty());
        assert_eq!(
            out.h2c,
            Some(H2cUpgrade {
                request: h2c_request_head(),
                offset,
            })
        );
        assert_eq!(&seg[offset..offset + 9], &H2_FRAMES[..9]);
        // HTTP/2 bytes on both sides are ignored from here on, even HTTP/1-looking ones.
        let out = feed(
            &mut p,
            Side::Client,
            3,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        );
        assert!(out.issues.is_empty() && out.exchanges.is_empty() && out.h2c.is_none());
        let out = feed(&mut p, Side::Server, 4, OK_EMPTY);
        assert!(out.issues.is_empty() && out.exchanges.is_empty() && out.h2c.is_none());
        let out = finish(&mut p, 5);
        assert!(out.issues.is_empty() && out.exchanges.is_empty());
    }

    #[test]
    fn h2c_upgrade_split_101_frames_later() {
        let mut p = parser();
        // The request head arrives in two parts; upgrade tokens in any case, in a list.
        feed(
            &mut p,
            Side::Client,
            1,
            b"GET /h2 HTTP/1.1\r\nHost: h\r\nUpgrade: foo/2, H2C \r\n",
        );
        feed(&mut p, Side::Client, 2, b"Connection: Upgrade\r\n\r\n");
        // The 101 head split across segments: the offset is in the segment that ends it.
        let (a, b) = H2C_101.split_at(20);
        let out = feed(&mut p, Side::Server, 3, a);
        assert!(out.issues.is_empty() && out.h2c.is_none());
        let out = feed(&mut p, Side::Server, 4, b);
        assert!(out.issues.is_empty() && out.exchanges.is_empty());
        assert_eq!(
            out.h2c,
            Some(H2cUpgrade {
                request: RequestHead {
                    method: "GET".to_owned(),
                    target: "/h2".to_owned(),
                    headers: vec![hdr("host", "h")],
                    start_ns: 1,
                    end_ns: 2,
                    body_bytes: 0,
                },
                offset: b.len(),
            })
        );
        // The frames come in a later segment: ignored here.
        let out = feed(&mut p, Side::Server, 5, H2_FRAMES);
        assert!(out.issues.is_empty() && out.exchanges.is_empty() && out.h2c.is_none());
    }

    #[test]
    fn h2c_upgrade_declined_or_mismatched() {
        // The server answers the upgrade request normally: a normal exchange.
        let mut p = parser();
        feed(&mut p, Side::Client, 1, H2C_REQUEST);
        let out = feed(
            &mut p,
            Side::Server,
            2,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        );
        assert!(out.issues.is_empty() && out.h2c.is_none());
        assert_eq!(summary(&out.exchanges), vec![s("POST", "/rpc", 200)]);
        assert_eq!(out.exchanges[0].request_body_bytes, 3);
        feed(&mut p, Side::Client, 3, b"GET /next HTTP/1.1\r\n\r\n");
        let out = feed(&mut p, Side::Server, 4, OK_EMPTY);
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/next", 200)]);

        // A 101 to something else than h2c: today's upgrade behaviour.
        let mut p = parser();
        feed(
            &mut p,
            Side::Client,
            1,
            b"GET / HTTP/1.1\r\nUpgrade: websocket, h2c\r\nConnection: Upgrade\r\n\r\n",
        );
        let out = feed(
            &mut p,
            Side::Server,
            2,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        );
        assert_eq!(out.issues, vec![ParseIssue::Upgraded]);
        assert!(out.h2c.is_none());
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/", 101)]);

        // `h2c` must be a token of the list, not a substring.
        let mut p = parser();
        feed(
            &mut p,
            Side::Client,
            1,
            b"GET / HTTP/1.1\r\nUpgrade: h2cx\r\n\r\n",
        );
        let out = feed(&mut p, Side::Server, 2, H2C_101);
        assert_eq!(out.issues, vec![ParseIssue::Upgraded]);
        assert!(out.h2c.is_none());
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/", 101)]);

        // A 101 h2c answering no known request: no hand-over possible.
        let mut p = parser();
        let out = feed(&mut p, Side::Server, 1, H2C_101);
        assert_eq!(
            out.issues,
            vec![ParseIssue::UnpairedResponse, ParseIssue::Upgraded]
        );
        assert!(out.h2c.is_none());
    }

    #[test]
    fn connect_tunnel() {
        let mut p = parser();
        feed(
            &mut p,
            Side::Client,
            1,
            b"CONNECT api.example:443 HTTP/1.1\r\nHost: api.example:443\r\n\r\n",
        );
        let out = feed(
            &mut p,
            Side::Server,
            2,
            b"HTTP/1.1 200 Connection Established\r\n\r\n",
        );
        assert_eq!(out.issues, vec![ParseIssue::Upgraded]);
        assert_eq!(
            summary(&out.exchanges),
            vec![s("CONNECT", "api.example:443", 200)]
        );
        let out = feed(&mut p, Side::Client, 3, &[0x16, 0x03, 0x01, 0x00, 0x05]);
        assert!(out.issues.is_empty());
        assert!(finish(&mut p, 4).issues.is_empty());

        // Refused: the connection stays HTTP/1.
        let mut p = parser();
        feed(
            &mut p,
            Side::Client,
            1,
            b"CONNECT blocked:443 HTTP/1.1\r\n\r\n",
        );
        let out = feed(
            &mut p,
            Side::Server,
            2,
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno!",
        );
        assert!(out.issues.is_empty());
        assert_eq!(
            summary(&out.exchanges),
            vec![s("CONNECT", "blocked:443", 403)]
        );
        feed(&mut p, Side::Client, 3, b"GET / HTTP/1.1\r\n\r\n");
        let out = feed(&mut p, Side::Server, 4, OK_EMPTY);
        assert!(out.issues.is_empty());
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/", 200)]);
    }

    #[test]
    fn http10_response_until_close() {
        let mut p = parser();
        let out = feed(&mut p, Side::Client, 1, b"GET /old HTTP/1.0\r\n\r\n");
        assert!(out.issues.is_empty());
        let out = feed(
            &mut p,
            Side::Server,
            2,
            b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n<html>",
        );
        assert!(out.issues.is_empty());
        assert_eq!(
            out.exchanges,
            vec![ParsedExchange {
                minor_version: 0,
                request_start_ns: 1,
                request_end_ns: 1,
                response_ns: 2,
                response_body_bytes: None,
                ..exchange("GET", "/old", 200)
            }]
        );
        // The body runs to the close: bytes that look like a response are body, and gaps too.
        let out = feed(
            &mut p,
            Side::Server,
            3,
            b"HTTP/1.1 500 Not a response\r\n\r\n",
        );
        assert!(out.issues.is_empty() && out.exchanges.is_empty());
        let out = feed_gap(&mut p, Side::Server, 4, b"more", 100_000);
        assert!(out.issues.is_empty() && out.exchanges.is_empty());
        let out = finish(&mut p, 5);
        assert!(out.issues.is_empty() && out.exchanges.is_empty());

        // HTTP/1.1 with Connection: close and no length behaves the same.
        let mut p = parser();
        feed(&mut p, Side::Client, 1, b"GET /x HTTP/1.1\r\n\r\n");
        let out = feed(
            &mut p,
            Side::Server,
            2,
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc",
        );
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/x", 200)]);
        assert_eq!(out.exchanges[0].response_body_bytes, None);
        assert!(finish(&mut p, 3).issues.is_empty());
    }

    #[test]
    fn header_allowlist_filtering() {
        let allowlist = Arc::new(HeaderAllowlist::new(["Host", "X-API-Key", "authorization"]));
        let mut p = Http1Parser::new(ParserLimits::default(), allowlist);
        feed(
            &mut p,
            Side::Client,
            1,
            b"GET / HTTP/1.1\r\nHOST: Example.COM\r\nAccept: */*\r\nx-api-key: k1\r\nCookie: secret=1\r\nAuthorization: Bearer \xfftok\r\nX-Api-Key: k2\r\n\r\n",
        );
        let out = feed(&mut p, Side::Server, 2, OK_EMPTY);
        assert_eq!(out.exchanges.len(), 1);
        assert_eq!(
            out.exchanges[0].request_headers,
            vec![
                hdr("host", "Example.COM"),
                hdr("x-api-key", "k1"),
                hdr("authorization", "Bearer \u{fffd}tok"),
                hdr("x-api-key", "k2"),
            ]
        );
        // Debug output never shows values.
        let debug = format!("{:?}", out.exchanges[0].request_headers);
        assert!(!debug.contains("k1") && !debug.contains("tok"));
    }

    #[test]
    fn malformed_then_resync() {
        let mut p = parser();
        let out = feed(&mut p, Side::Client, 1, b"GET / HTTP/1.1\r\n\r\n");
        assert!(out.issues.is_empty());
        // Not HTTP where a request was expected.
        let out = feed(&mut p, Side::Client, 2, b"\x00\x01garbage\xff\r\n\r\n");
        assert_eq!(out.issues, vec![ParseIssue::Malformed]);
        // Ignored until a segment starts with a request, even if one starts mid-segment.
        let out = feed(
            &mut p,
            Side::Client,
            3,
            b"more junk GET /no HTTP/1.1\r\n\r\n",
        );
        assert!(out.issues.is_empty());
        let out = feed(
            &mut p,
            Side::Client,
            4,
            b"POST /ok HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
        );
        assert!(out.issues.is_empty());
        let out = feed(
            &mut p,
            Side::Server,
            5,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(out.issues.is_empty());
        assert_eq!(
            summary(&out.exchanges),
            vec![s("GET", "/", 200), s("POST", "/ok", 201)]
        );
        assert_eq!(out.exchanges[1].request_start_ns, 4);

        // Same on the server side: bad status line, then a resync at "HTTP/1.".
        feed(
            &mut p,
            Side::Client,
            6,
            b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n",
        );
        let out = feed(&mut p, Side::Server, 7, b"HTTP/1.1 2x0 Bad\r\n\r\n");
        assert_eq!(out.issues, vec![ParseIssue::Malformed]);
        let out = feed(&mut p, Side::Server, 8, b"junk");
        assert!(out.issues.is_empty());
        let out = feed(&mut p, Side::Server, 9, OK_EMPTY);
        assert!(out.issues.is_empty());
        // Pairing resumes with the oldest pending request.
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/1", 200)]);
        assert_eq!(finish(&mut p, 10).issues, vec![ParseIssue::Unanswered]);
    }

    #[test]
    fn invalid_content_length_is_malformed() {
        let mut p = parser();
        let out = feed(
            &mut p,
            Side::Client,
            1,
            b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        );
        assert_eq!(out.issues, vec![ParseIssue::Malformed]);
        // The request itself was read and still gets its response.
        let out = feed(
            &mut p,
            Side::Server,
            2,
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(out.issues.is_empty());
        assert_eq!(summary(&out.exchanges), vec![s("POST", "/a", 400)]);
        assert_eq!(out.exchanges[0].request_body_bytes, 0);
        // Repeated identical values are fine.
        let out = feed(
            &mut p,
            Side::Client,
            3,
            b"POST /b HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nhiGET /c HTTP/1.1\r\n\r\n",
        );
        assert!(out.issues.is_empty());
        let out = feed(&mut p, Side::Server, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n");
        assert_eq!(
            summary(&out.exchanges),
            vec![s("POST", "/b", 200), s("GET", "/c", 200)]
        );
        assert_eq!(out.issues, vec![ParseIssue::Malformed]);
    }

    #[test]
    fn truncated_head_then_resync() {
        let mut p = parser();
        // The head continues past what was captured.
        let out = feed_gap(
            &mut p,
            Side::Client,
            1,
            b"GET /lost HTTP/1.1\r\nHost: h\r\nCookie: aaaa",
            4096,
        );
        assert_eq!(out.issues, vec![ParseIssue::Truncated]);
        // The tail of the lost request's data, then a new request at a segment start.
        let out = feed(&mut p, Side::Client, 2, b"aaaa\r\n\r\n");
        assert!(out.issues.is_empty());
        let out = feed(
            &mut p,
            Side::Client,
            3,
            b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n",
        );
        assert!(out.issues.is_empty());
        // The lost request's response is consumed without an exchange; the next pairs right.
        let out = feed(
            &mut p,
            Side::Server,
            4,
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlostHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext",
        );
        assert!(out.issues.is_empty());
        assert_eq!(
            out.exchanges,
            vec![ParsedExchange {
                request_headers: vec![hdr("host", "h")],
                request_start_ns: 3,
                request_end_ns: 3,
                response_ns: 4,
                response_body_bytes: Some(4),
                ..exchange("GET", "/next", 200)
            }]
        );
        assert!(finish(&mut p, 5).issues.is_empty());

        // A gap where the next head should start (after a complete message).
        let mut p = parser();
        let out = feed_gap(&mut p, Side::Client, 1, b"GET /a HTTP/1.1\r\n\r\n", 100);
        assert_eq!(out.issues, vec![ParseIssue::Truncated]);
        feed(&mut p, Side::Client, 2, b"GET /c HTTP/1.1\r\n\r\n");
        let out = feed(&mut p, Side::Server, 3, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 202 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 203 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(out.issues.is_empty());
        assert_eq!(
            summary(&out.exchanges),
            vec![s("GET", "/a", 200), s("GET", "/c", 203)]
        );

        // Response head truncated: its request is dropped, the next response pairs right.
        let mut p = parser();
        feed(
            &mut p,
            Side::Client,
            1,
            b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n",
        );
        let out = feed_gap(
            &mut p,
            Side::Server,
            2,
            b"HTTP/1.1 200 OK\r\nSet-Cookie: x",
            8000,
        );
        assert_eq!(out.issues, vec![ParseIssue::Truncated]);
        assert!(out.exchanges.is_empty());
        let out = feed(
            &mut p,
            Side::Server,
            3,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(out.issues.is_empty());
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/2", 404)]);

        // A gap over a chunk-size line.
        let mut p = parser();
        feed(&mut p, Side::Client, 1, b"GET /c HTTP/1.1\r\n\r\n");
        let out = feed_gap(
            &mut p,
            Side::Server,
            2,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            5000,
        );
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/c", 200)]);
        assert_eq!(out.issues, vec![ParseIssue::Truncated]);
        feed(&mut p, Side::Client, 3, b"GET /d HTTP/1.1\r\n\r\n");
        let out = feed(&mut p, Side::Server, 4, OK_EMPTY);
        assert!(out.issues.is_empty());
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/d", 200)]);
    }

    #[test]
    fn head_too_large() {
        let limits = ParserLimits {
            max_head_bytes: 256,
            max_headers: 8,
            max_pending: 64,
        };
        let mut p = Http1Parser::new(limits, Arc::new(HeaderAllowlist::default()));
        let big = format!("GET /big HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(400));
        // In one segment.
        let out = feed(&mut p, Side::Client, 1, big.as_bytes());
        assert_eq!(out.issues, vec![ParseIssue::HeadTooLarge]);
        assert_eq!(p.buffered(Side::Client), 0);
        // Across segments: the limit trips once the buffer is full.
        feed(&mut p, Side::Client, 2, b"GET /big2 HTTP/1.1\r\n");
        let mut issues = Vec::new();
        for _ in 0..10 {
            let out = feed(&mut p, Side::Client, 3, &[b'x'; 50]);
            issues.extend(out.issues);
            assert!(p.buffered(Side::Client) <= 256);
        }
        assert_eq!(issues, vec![ParseIssue::HeadTooLarge]);
        // Too many headers counts as too large.
        let many: String = (0..9).map(|i| format!("H{i}: v\r\n")).collect();
        let out = feed(
            &mut p,
            Side::Client,
            4,
            format!("GET /many HTTP/1.1\r\n{many}\r\n").as_bytes(),
        );
        assert_eq!(out.issues, vec![ParseIssue::HeadTooLarge]);
        // A head within the limit still works; the three lost requests' responses are
        // consumed silently and this one pairs.
        feed(
            &mut p,
            Side::Client,
            5,
            b"GET /fits HTTP/1.1\r\nHost: h\r\n\r\n",
        );
        for _ in 0..3 {
            let out = feed(
                &mut p,
                Side::Server,
                6,
                b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\n",
            );
            assert!(out.exchanges.is_empty() && out.issues.is_empty());
        }
        let out = feed(&mut p, Side::Server, 7, OK_EMPTY);
        assert!(out.issues.is_empty());
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/fits", 200)]);

        // Response side.
        feed(&mut p, Side::Client, 8, b"GET /r HTTP/1.1\r\n\r\n");
        let big = format!("HTTP/1.1 200 OK\r\nX-Pad: {}\r\n\r\n", "b".repeat(400));
        let out = feed(&mut p, Side::Server, 9, big.as_bytes());
        assert_eq!(out.issues, vec![ParseIssue::HeadTooLarge]);
        assert!(out.exchanges.is_empty());
        assert!(finish(&mut p, 10).issues.is_empty());
    }

    #[test]
    fn unpaired_response() {
        let mut p = parser();
        let out = feed(
            &mut p,
            Side::Server,
            1,
            b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 7\r\n\r\nHTTP/1.",
        );
        assert_eq!(out.issues, vec![ParseIssue::UnpairedResponse]);
        assert!(out.exchanges.is_empty());
        // Its body was skipped: the next request/response pair normally.
        feed(&mut p, Side::Client, 2, b"GET / HTTP/1.1\r\n\r\n");
        let out = feed(&mut p, Side::Server, 3, OK_EMPTY);
        assert!(out.issues.is_empty());
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/", 200)]);
        // A chunked unpaired response is skipped as well.
        let out = feed(
            &mut p,
            Side::Server,
            4,
            b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nHTT\r\n0\r\n\r\n",
        );
        assert_eq!(out.issues, vec![ParseIssue::UnpairedResponse]);
        feed(&mut p, Side::Client, 5, b"GET /z HTTP/1.1\r\n\r\n");
        let out = feed(&mut p, Side::Server, 6, OK_EMPTY);
        assert!(out.issues.is_empty());
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/z", 200)]);
    }

    #[test]
    fn unanswered_at_finish() {
        let mut p = parser();
        feed(
            &mut p,
            Side::Client,
            1,
            b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n",
        );
        let out = feed(&mut p, Side::Server, 2, OK_EMPTY);
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/1", 200)]);
        let out = finish(&mut p, 3);
        assert!(out.exchanges.is_empty());
        assert_eq!(
            out.issues,
            vec![ParseIssue::Unanswered, ParseIssue::Unanswered]
        );
        // A partial head at close is reported as truncated.
        let mut p = parser();
        feed(&mut p, Side::Client, 1, b"GET /half HTTP/1.1\r\nHo");
        assert_eq!(finish(&mut p, 2).issues, vec![ParseIssue::Truncated]);
    }

    #[test]
    fn pending_overflow_drops_oldest() {
        let limits = ParserLimits {
            max_pending: 2,
            ..ParserLimits::default()
        };
        let mut p = Http1Parser::new(limits, Arc::new(HeaderAllowlist::default()));
        let out = feed(
            &mut p,
            Side::Client,
            1,
            b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n",
        );
        assert_eq!(out.issues, vec![ParseIssue::Unanswered]);
        let out = feed(&mut p, Side::Server, 2, OK_EMPTY);
        assert_eq!(summary(&out.exchanges), vec![s("GET", "/2", 200)]);
    }

    /// xorshift64* PRNG: deterministic, dependency-free.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn fuzz_random_segments_never_panic() {
        // Pieces that steer the parser into every state; mixed with random bytes.
        const PIECES: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"POST /p HTTP/1.1\r\nContent-Length: 10\r\n\r\n",
            b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HEAD /h HTTP/1.0\r\n\r\n",
            b"CONNECT x:1 HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"5\r\nhello\r\n",
            b"0\r\n\r\n",
            b"ffffffffffffff\r\n",
            b"\r\n",
            b"Content-Length: 99999999999999999999999\r\n",
        ];
        for seed in 1..=4u64 {
            let limits = ParserLimits {
                max_head_bytes: 512,
                max_headers: 16,
                max_pending: 8,
            };
            let mut p = Http1Parser::new(limits, Arc::new(HeaderAllowlist::default()));
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
            let mut data = Vec::new();
            let mut total = ParserOutput::default();
            for i in 0..2_000u64 {
                data.clear();
                let side = if rng.below(2) == 0 {
                    Side::Client
                } else {
                    Side::Server
                };
                match rng.below(3) {
                    0 => {
                        let n = rng.below(700) as usize;
                        data.extend((0..n).map(|_| rng.next() as u8));
                    }
                    1 => {
                        for _ in 0..=rng.below(4) {
                            data.extend_from_slice(PIECES[rng.below(PIECES.len() as u64) as usize]);
                        }
                    }
                    _ => {
                        // A piece cut at a random point, with a random tail.
                        let piece = PIECES[rng.below(PIECES.len() as u64) as usize];
                        data.extend_from_slice(
                            &piece[..rng.below(piece.len() as u64 + 1) as usize],
                        );
                        let n = rng.below(20) as usize;
                        data.extend((0..n).map(|_| rng.next() as u8));
                    }
                }
                let len = match rng.below(4) {
                    0 => data.len() as u64 + rng.below(100_000),
                    _ => data.len() as u64,
                };
                let mut out = ParserOutput::default();
                p.feed(
                    side,
                    Segment {
                        ts_ns: i,
                        data: &data,
                        len,
                        ..Default::default()
                    },
                    &mut out,
                );
                assert!(p.buffered(Side::Client) <= 512);
                assert!(p.buffered(Side::Server) <= 512);
                assert!(p.pending.len() <= 8);
                total.exchanges.extend(out.exchanges);
                total.issues.extend(out.issues);
                if rng.below(500) == 0 {
                    p.finish(i, &mut total);
                }
            }
            let mut out = ParserOutput::default();
            p.finish(2_000, &mut out);
            assert!(p.pending.is_empty());
            // The structured pieces must have produced some results.
            assert!(!total.issues.is_empty());
        }
    }
}
