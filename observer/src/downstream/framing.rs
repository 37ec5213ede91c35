//! Framing of length-prefixed streams, shared by the PostgreSQL, MySQL and DNS-over-TCP
//! parsers: whole messages (or their first bytes) out of segments, bodies skipped by
//! count (also the bytes the capture did not copy), and a bounded map of statements.

use std::collections::{HashMap, VecDeque};

use super::{Output, Segment, Skip};
use crate::http::Side;

/// Most bytes of one message buffered (longer query texts are fingerprinted from their
/// first `MAX_BUFFER` bytes).
pub(crate) const MAX_BUFFER: usize = 64 * 1024;
/// Most requests waiting for their response.
pub(crate) const MAX_PENDING: usize = 256;
/// Most prepared statements (and portals) remembered.
pub(crate) const MAX_STATEMENTS: usize = 256;

/// One message of a length-prefixed stream: its header, the first `want` bytes of its
/// body (fewer when the capture was cut, then counted `Skip::Truncated`).
pub(crate) struct Msg<'a> {
    pub hdr: &'a [u8],
    pub body: &'a [u8],
    pub body_len: u64,
    /// Timestamp of the segment holding the message's first byte.
    pub start_ns: u64,
    /// Timestamp of the segment that completed the message (or its wanted part).
    pub ts_ns: u64,
}

/// The protocol side of a [`Framer`].
pub(crate) trait Frames {
    /// Length of the next message's header.
    fn header_len(&self, side: Side) -> usize;
    /// The body length a header declares, and how many body bytes the parser wants to
    /// see (the rest is skipped unread). `None`: a bad header.
    fn header(&self, side: Side, hdr: &[u8]) -> Option<(u64, usize)>;
    fn message(&mut self, side: Side, msg: Msg<'_>, out: &mut Output);
    /// The stream lost sync on `side` (bytes lost): drop what depends on it.
    fn lost(&mut self, side: Side);
    /// Bytes of `side` were not captured past a message boundary (segment `ts`): the
    /// framing is lost, no byte is (the default: as [`Frames::lost`]).
    fn cut(&mut self, side: Side, _ts: u64) {
        self.lost(side)
    }
    /// Whether a header may start a message when resynchronising (a stricter check than
    /// [`Frames::header`]).
    fn plausible(&self, _side: Side, _hdr: &[u8]) -> bool {
        true
    }
    /// Where parsing may resume in a segment after a loss (`total`: the bytes the
    /// segment moved): by default at its start when its captured bytes are a chain of
    /// plausible messages.
    fn resync(&self, side: Side, data: &[u8], total: u64) -> Option<usize> {
        chain(self, side, data, total).then_some(0)
    }
    /// Nothing more is to be parsed.
    fn stopped(&self) -> bool;
}

/// Whether `data` (of a segment that moved `total` bytes) starts with a chain of
/// plausible messages covering its captured bytes.
pub(crate) fn chain<H: Frames + ?Sized>(h: &H, side: Side, data: &[u8], total: u64) -> bool {
    let hl = h.header_len(side);
    let mut i = 0usize;
    loop {
        if i > 0 && i >= data.len() {
            return true;
        }
        if data.len() - i < hl {
            return i > 0;
        }
        let hdr = &data[i..i + hl];
        let Some((body_len, _)) = h.header(side, hdr) else {
            return false;
        };
        if !h.plausible(side, hdr) {
            return false;
        }
        let end = i as u64 + hl as u64 + body_len;
        if end > total {
            return false;
        }
        i = end.min(data.len() as u64 + 1) as usize;
    }
}

/// Cuts one direction of a stream into messages, buffering partial ones (at most
/// `MAX_BUFFER` bytes) and skipping unwanted bodies by count (captured or not).
#[derive(Default)]
pub(crate) struct Framer {
    hdr: Vec<u8>,
    start_ns: u64,
    body: Vec<u8>,
    /// Header read: (body length, wanted bytes).
    cur: Option<(u64, usize)>,
    /// Body bytes still to skip.
    skip: u64,
    /// After a loss: the next segment must start with a valid message.
    resync: bool,
    pub broken: bool,
}

impl Framer {
    fn reset(&mut self) {
        self.hdr.clear();
        self.body.clear();
        self.cur = None;
        self.skip = 0;
    }

    fn deliver<H: Frames>(&mut self, h: &mut H, side: Side, ts: u64, out: &mut Output) {
        if let Some((body_len, want)) = self.cur.take() {
            let complete = self.body.len() >= want;
            if !complete {
                out.skips.push(Skip::Truncated);
            }
            h.message(
                side,
                Msg {
                    hdr: &self.hdr,
                    body: &self.body,
                    body_len,
                    start_ns: self.start_ns,
                    ts_ns: ts,
                },
                out,
            );
            self.skip = body_len - self.body.len() as u64;
            self.hdr.clear();
            self.body.clear();
        }
    }

    fn lose<H: Frames>(&mut self, h: &mut H, side: Side) {
        self.reset();
        self.resync = true;
        h.lost(side);
    }

    pub fn feed<H: Frames>(&mut self, h: &mut H, side: Side, seg: Segment<'_>, out: &mut Output) {
        if self.broken || h.stopped() {
            return;
        }
        if seg.lost_before > 0 {
            out.skips.push(Skip::Lost);
            self.lose(h, side);
        }
        let data = seg.data;
        let total = seg.len.max(data.len() as u64);
        let mut i = 0;
        if self.resync {
            match h.resync(side, data, total) {
                Some(at) => i = at,
                None => return,
            }
            self.resync = false;
        }
        while i < data.len() && !h.stopped() {
            let rest = &data[i..];
            if self.skip > 0 {
                let n = self.skip.min(rest.len() as u64);
                self.skip -= n;
                i += n as usize;
                continue;
            }
            if let Some((_, want)) = self.cur {
                let n = (want - self.body.len()).min(rest.len());
                self.body.extend_from_slice(&rest[..n]);
                i += n;
                if self.body.len() >= want {
                    self.deliver(h, side, seg.ts_ns, out);
                }
                continue;
            }
            if self.hdr.is_empty() {
                self.start_ns = seg.ts_ns;
            }
            let hl = h.header_len(side);
            let n = (hl - self.hdr.len().min(hl)).min(rest.len());
            self.hdr.extend_from_slice(&rest[..n]);
            i += n;
            if self.hdr.len() >= hl {
                match h.header(side, &self.hdr) {
                    None => {
                        out.skips.push(Skip::Malformed);
                        self.reset();
                        self.broken = true;
                        h.lost(side);
                        return;
                    }
                    Some((body_len, want)) => {
                        let want = (want.min(MAX_BUFFER) as u64).min(body_len) as usize;
                        self.cur = Some((body_len, want));
                        if want == 0 {
                            self.deliver(h, side, seg.ts_ns, out);
                        }
                    }
                }
            }
        }
        let mut unknown = seg.len.saturating_sub(data.len() as u64);
        if unknown == 0 || h.stopped() {
            return;
        }
        let n = self.skip.min(unknown);
        self.skip -= n;
        unknown -= n;
        if unknown == 0 {
            return;
        }
        let mut counted = false;
        if let Some((body_len, _)) = self.cur {
            // A message cut: what was captured of it is delivered (counted truncated).
            let rest = body_len - self.body.len() as u64;
            self.deliver(h, side, seg.ts_ns, out);
            if unknown <= rest {
                self.skip = rest - unknown;
                return;
            }
            counted = true;
        }
        // Unknown bytes past a message boundary: the stream's framing is lost.
        if !counted {
            out.skips.push(Skip::Truncated);
        }
        self.reset();
        self.resync = true;
        h.cut(side, seg.ts_ns);
    }
}

/// Big-endian u32 at `at` (0 when out of range).
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
        .unwrap_or(0)
}

/// A bounded map, oldest entry evicted first.
pub(crate) struct Bounded<V> {
    map: HashMap<Vec<u8>, V>,
    order: VecDeque<Vec<u8>>,
}

impl<V> Default for Bounded<V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<V> Bounded<V> {
    pub(crate) fn insert(&mut self, k: &[u8], v: V) {
        if self.map.insert(k.to_vec(), v).is_none() {
            self.order.push_back(k.to_vec());
            while self.order.len() > MAX_STATEMENTS {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
    pub(crate) fn get(&self, k: &[u8]) -> Option<&V> {
        self.map.get(k)
    }
}
