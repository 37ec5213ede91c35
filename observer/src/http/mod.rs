//! Protocol parsers: bytes of one connection in, paired request/response heads out.
//!
//! The connection stage (`conn`) detects the protocol from the first bytes a client sends
//! ([`detect`]) and hands the connection to one [`StreamParser`]. A new protocol (HTTP/2)
//! is a new parser beside [`h1::Http1Parser`], not new branches inside it.
//!
//! Bodies are skipped, never stored: only the request line, the status and an allowlist of
//! request headers leave a parser.

pub mod h1;
pub mod h2;
pub mod hpack;

use std::sync::Arc;

/// Which peer sent a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Bytes sent by the client (requests).
    Client,
    /// Bytes sent by the server (responses).
    Server,
}

impl Side {
    /// The other peer.
    pub fn other(self) -> Self {
        match self {
            Self::Client => Self::Server,
            Self::Server => Self::Client,
        }
    }
}

/// The bytes of one read or write on a connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Segment<'a> {
    /// Monotonic time of the call, nanoseconds.
    pub ts_ns: u64,
    /// The captured prefix of what the call transferred.
    pub data: &'a [u8],
    /// How many bytes the call transferred (`>= data.len()`); the bytes after `data` were
    /// not captured and are a gap the parser must skip or resynchronise after.
    pub len: u64,
    /// Where the call sat in the connection's streams, when the kernel counted it.
    pub at: Option<Offsets>,
    /// Bytes this side sent before `data` that were never seen (their records were
    /// lost): the parser skips them as a gap before this segment.
    pub lost_before: u64,
}

/// A call's place in its connection, as the kernel counted bytes per socket, direction
/// and source (syscall bytes or TLS plaintext).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    /// Bytes moved in the call's direction before it: the stream offset of its first byte.
    pub own: u64,
    /// Bytes moved in the other direction when the call happened. A response written
    /// before a request was read cannot answer it.
    pub peer: u64,
}

/// Protocols a connection can be detected as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    Http2,
}

/// Outcome of looking at the first bytes a client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    Http1,
    /// The HTTP/2 connection preface (`PRI * HTTP/2.0`).
    Http2,
    /// Not a protocol we parse; the connection is ignored from here on.
    Unknown,
    /// Too few bytes to tell.
    NeedMore,
}

/// A request header kept by a parser (its name is in the allowlist).
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    /// Lower-case name.
    pub name: String,
    /// Value, lossy UTF-8. May hold a credential: never log or export it.
    pub value: String,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values may be credentials: only their length is printed.
        write!(f, "{}: <{} bytes>", self.name, self.value.len())
    }
}

/// Names of the request headers a parser keeps; every other header is dropped at parse
/// time.
#[derive(Clone, Debug)]
pub struct HeaderAllowlist {
    names: Vec<String>,
}

impl HeaderAllowlist {
    /// Headers the pipeline needs by default: routing, identity, client software.
    pub const DEFAULT: &'static [&'static str] = &[
        "host",
        "user-agent",
        "authorization",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "cookie",
        "content-type",
    ];

    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut names: Vec<String> = names
            .into_iter()
            .map(|n| n.as_ref().to_ascii_lowercase())
            .collect();
        names.sort();
        names.dedup();
        Self { names }
    }

    /// The kept names: lower case, sorted, without duplicates.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether a header name (any case) is kept.
    pub fn allows(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

impl Default for HeaderAllowlist {
    fn default() -> Self {
        Self::new(Self::DEFAULT)
    }
}

/// A request and its response, as one parser paired them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedExchange {
    pub protocol: Protocol,
    pub method: String,
    /// Request target as sent (origin-form `/path?query`, or absolute-form). May hold
    /// credentials in its query: never log or export it raw.
    pub target: String,
    /// HTTP minor version for HTTP/1.x (0 or 1); 0 for HTTP/2.
    pub minor_version: u8,
    pub status: u16,
    /// Allowlisted request headers, in the order received.
    pub request_headers: Vec<Header>,
    /// When the first byte of the request was seen.
    pub request_start_ns: u64,
    /// When the request head was complete.
    pub request_end_ns: u64,
    /// When the response head was complete.
    pub response_ns: u64,
    /// Request body length as declared or counted (0 when none).
    pub request_body_bytes: u64,
    /// Response body length when declared by Content-Length (HTTP/1) or counted from
    /// DATA frames (HTTP/2).
    pub response_body_bytes: Option<u64>,
    /// gRPC call details (HTTP/2 with `content-type: application/grpc*`).
    pub grpc: Option<Grpc>,
}

/// What a gRPC call showed besides its HTTP exchange.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Grpc {
    /// `grpc-status` from the trailers (or a trailers-only response); `None` when the
    /// stream ended without one (reset, lost, or the header was unknown).
    pub status: Option<u8>,
    /// Length of `grpc-message`, when present; the text itself is never kept.
    pub message_len: Option<u32>,
    /// Length-prefixed messages the client sent on the stream.
    pub request_messages: u32,
    /// Length-prefixed messages the server sent on the stream.
    pub response_messages: u32,
}

/// A request head parsed before its response: what an HTTP/1.1 `Upgrade: h2c` hands to
/// the HTTP/2 parser as stream 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// Allowlisted request headers, in the order received.
    pub headers: Vec<Header>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub body_bytes: u64,
}

/// The server accepted `Upgrade: h2c` (101): the connection continues as HTTP/2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2cUpgrade {
    /// The upgraded request; its response comes on HTTP/2 stream 1.
    pub request: RequestHead,
    /// Offset in the server segment being fed where the HTTP/2 bytes begin (just after
    /// the 101 head).
    pub offset: usize,
}

/// Why a parser dropped bytes or a message. Each is counted by the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseIssue {
    /// Bytes that are not valid HTTP where a message head was expected.
    Malformed,
    /// A message head fell (partly) in bytes that were not captured.
    Truncated,
    /// A message head grew beyond the parser's limit.
    HeadTooLarge,
    /// A response arrived with no request waiting for it.
    UnpairedResponse,
    /// A request got no response before the connection closed.
    Unanswered,
    /// The connection switched to a protocol we do not parse (101, CONNECT tunnel).
    Upgraded,
    /// HTTP/2 connection joined after its start (agent started later, or the start was
    /// lost): header table entries inserted before are unknown.
    MidstreamJoin,
    /// HTTP/2 frames lost sync (bytes lost or invalid) and resumed at a frame boundary.
    FrameResync,
    /// An HPACK reference to a table entry that was never seen: that header is unknown.
    HpackUnknown,
    /// A header block that is not valid HPACK: its headers are lost, the table reset.
    HpackError,
    /// A header list beyond the size limit (HPACK bomb): the rest of it was dropped.
    HeaderListTooLarge,
    /// An HTTP/2 stream ended by RST_STREAM.
    StreamReset,
    /// An HTTP/2 stream ended by GOAWAY without a response.
    GoAway,
    /// Records of the connection never reached the agent (ring buffer full): the parser
    /// skipped the bytes and resynchronised.
    Lost,
}

impl ParseIssue {
    pub const ALL: [Self; 14] = [
        Self::Malformed,
        Self::Truncated,
        Self::HeadTooLarge,
        Self::UnpairedResponse,
        Self::Unanswered,
        Self::Upgraded,
        Self::MidstreamJoin,
        Self::FrameResync,
        Self::HpackUnknown,
        Self::HpackError,
        Self::HeaderListTooLarge,
        Self::StreamReset,
        Self::GoAway,
        Self::Lost,
    ];

    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Truncated => "truncated",
            Self::HeadTooLarge => "head_too_large",
            Self::UnpairedResponse => "unpaired_response",
            Self::Unanswered => "unanswered",
            Self::Upgraded => "upgraded",
            Self::MidstreamJoin => "h2_midstream_join",
            Self::FrameResync => "h2_frame_resync",
            Self::HpackUnknown => "hpack_unknown_reference",
            Self::HpackError => "hpack_error",
            Self::HeaderListTooLarge => "header_list_too_large",
            Self::StreamReset => "h2_stream_reset",
            Self::GoAway => "h2_goaway",
            Self::Lost => "capture_loss",
        }
    }
}

/// What one `feed` or `finish` call produced.
#[derive(Debug, Default)]
pub struct ParserOutput {
    pub exchanges: Vec<ParsedExchange>,
    pub issues: Vec<ParseIssue>,
    /// Set by the HTTP/1 parser when the connection switched to HTTP/2 (`Upgrade: h2c`).
    pub h2c: Option<H2cUpgrade>,
    /// Exchanges that happened but could not be reported whole because bytes of them were
    /// lost (a request whose response was lost, a response to a request never seen).
    pub lost_exchanges: u32,
    /// Bodies of known length ahead on a side, as the stream offset where each ends: the
    /// kernel can count them without copying (only those of at least [`SKIP_MIN`] bytes).
    pub skips: Vec<(Side, u64)>,
}

/// Shortest body worth asking the kernel not to copy (one map update per body).
pub const SKIP_MIN: u64 = 32 * 1024;

/// Limits every parser enforces.
#[derive(Clone, Debug)]
pub struct ParserLimits {
    /// Largest message head buffered while waiting for its end.
    pub max_head_bytes: usize,
    /// Most headers in one message.
    pub max_headers: usize,
    /// Most requests waiting for a response on one connection (pipelining).
    pub max_pending: usize,
}

impl Default for ParserLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            max_pending: 64,
        }
    }
}

/// One connection's parser: fed both directions in the order the calls happened.
pub trait StreamParser: Send {
    fn protocol(&self) -> Protocol;
    /// Feed one read or write.
    fn feed(&mut self, side: Side, segment: Segment<'_>, out: &mut ParserOutput);
    /// The connection closed: complete what can be completed (a response delimited by
    /// close) and report requests left unanswered.
    fn finish(&mut self, ts_ns: u64, out: &mut ParserOutput);
}

/// Look at the first bytes a client sent on a connection.
pub fn detect(first: &[u8]) -> Detection {
    h1::detect(first)
}

/// Make the parser for a detected protocol (`None` for protocols not parsed yet).
pub fn parser_for(
    detection: Detection,
    limits: &ParserLimits,
    allowlist: &Arc<HeaderAllowlist>,
) -> Option<Box<dyn StreamParser>> {
    match detection {
        Detection::Http1 => Some(Box::new(h1::Http1Parser::new(
            limits.clone(),
            Arc::clone(allowlist),
        ))),
        Detection::Http2 => Some(Box::new(h2::Http2Parser::new(
            limits.clone(),
            Arc::clone(allowlist),
        ))),
        Detection::Unknown | Detection::NeedMore => None,
    }
}
