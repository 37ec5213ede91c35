//! HPACK (RFC 7541) header block decoding, for the HTTP/2 parser.
//!
//! # Design
//!
//! One [`Decoder`] per direction of a connection holds that direction's dynamic table.
//! [`Decoder::decode`] walks one complete header block (the HEADERS / PUSH_PROMISE fragment
//! plus its CONTINUATIONs) and hands every field to a callback as borrowed bytes: from the
//! block itself (raw literals), from the static or dynamic table (indexed fields and names),
//! or from a scratch buffer the decoder keeps between blocks (Huffman literals). Nothing is
//! allocated per field in the steady state; an insertion into the dynamic table allocates
//! its value (and a literal name), and a name taken from another dynamic entry is shared
//! (`Arc`), so inserting it again costs no copy.
//!
//! Huffman strings (Appendix B) are decoded four bits at a time with a state table built
//! once ([`OnceLock`]) from the code table: 256 states (the inner nodes of the code tree) ×
//! 16 nibbles, each step giving the next state, at most one symbol, whether EOS was hit
//! (`Malformed`) and whether stopping there is valid padding (at most 7 bits, all ones).
//!
//! # Table model: what we know of the peer's table
//!
//! The decoder holds the *known* entries: the most recent insertions it saw, newest first.
//! HPACK index 62 + k names the k-th most recent insertion, and eviction only ever removes
//! the oldest entries, so as long as no insertion was missed a known entry's index is right
//! whatever was evicted. Besides the entries:
//! * `unknown_tail`: the real table may hold entries older than the known ones, which we
//!   never saw. False for [`Decoder::new`], true for [`Decoder::midstream`] and after
//!   [`Decoder::forget`] (lost bytes may have hidden insertions).
//! * `size`: the encoder's table size (§4.2), and `size_known`: whether it is certain. It
//!   is certain at the start of a connection (4096) and after the encoder's size update
//!   (§6.3); a guess (the advertised limit) for a midstream decoder, after `forget`, and
//!   after the decoding peer lowered its SETTINGS value (the encoder may still be using the
//!   larger table for blocks already in flight, until its size update).
//! * an entry's size is name + value + 32 (§4.1); an entry inserted with a name taken from
//!   an unknown entry has an unknown name, counted as 0 bytes: `known_size` is a lower
//!   bound of the real size of the known entries.
//!
//! Rules:
//! * a reference to a known entry yields it (when the real table no longer holds it, the
//!   reference is an encoder error anyway);
//! * a reference beyond the known entries yields an unknown field (`None` parts, counted in
//!   [`BlockStats::unknown`]) when the real table may hold older entries, and is
//!   `Malformed` only when we are certain it cannot: `unknown_tail` is false, or the size is
//!   certain and `size - known_size` leaves no room for that many entries of at least 32
//!   bytes;
//! * an insertion whose name is unknown is still inserted (it shifts the indexes), with an
//!   unknown name;
//! * known entries are evicted, oldest first, while `known_size` (plus the entry being
//!   inserted) exceeds `size`. With a certain size the real table evicted them too, and with
//!   them every older entry: `unknown_tail` becomes false. With a guessed size (possibly too
//!   small) they may still be live: `unknown_tail` becomes true, so a later reference to
//!   them is unknown rather than `Malformed`. With a certain size, `known_size + 32 > size`
//!   also means no older entry fits: `unknown_tail` becomes false.
//!
//! In short: `Malformed` only when certain, unknown when unsure, never a wrong entry.
//!
//! # Table size
//!
//! [`Decoder::set_max_size`] records the limit advertised by the decoding peer (capped at
//! [`MAX_TABLE_SIZE`]). Raising it changes nothing until the encoder's size update (except
//! that an uncertain size takes the new limit as its guess); lowering it shrinks the table
//! at once (the encoder must follow before its next insertion), with the size marked
//! uncertain until the encoder's update. A size update must come at the
//! start of a block (else `Malformed`) and be at most the limit (else `TableSizeTooLarge`);
//! the previous, larger limit is still accepted until the encoder has followed a lowering
//! (blocks in flight), and a midstream decoder, which may have missed the SETTINGS, accepts
//! any update up to [`MAX_TABLE_SIZE`].
//!
//! # Bounds
//!
//! * Integers: at most 5 continuation bytes and a value below 2^32, else `Malformed`.
//! * Table memory: `size ≤ MAX_TABLE_SIZE` always; [`Decoder::table_bytes`] is the §4.1 size
//!   of the known entries.
//! * Scratch: a Huffman string decodes to at most 8/5 of its encoded length, so the scratch
//!   is bounded by the block (itself bounded by the HTTP/2 parser); there is no separate cap
//!   (a long string is decoded, not refused, so the table stays in sync). A scratch grown
//!   past 16 KiB is freed after the block.
//! * Header list (bomb protection): every field costs name + value + 32, an unknown part
//!   counting 32. Once the sum would pass `max_list`, no more fields are emitted, but the
//!   block is still decoded to the end so the table stays in sync, and `too_large` is set.
//!   Work per block is linear in its length (an indexed reference is one lookup, a copy is
//!   only of bytes present in the block).
//! * On `Err` the decoder forgets its table ([`Decoder::forget`]).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// The dynamic table size both ends start with (RFC 7540 §6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// Largest dynamic table kept, whatever SETTINGS_HEADER_TABLE_SIZE a peer advertised.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;

/// Bytes counted per table entry on top of its name and value (RFC 7541 §4.1), and per
/// field of a header list (RFC 7540 §6.5.2).
const ENTRY_OVERHEAD: usize = 32;
/// Continuation bytes accepted after an integer's prefix.
const MAX_INT_CONTINUATION: u32 = 5;
/// Scratch capacity kept from one block to the next.
const SCRATCH_KEEP: usize = 16 * 1024;

/// Why a header block could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not HPACK: a bad integer or string length, bad Huffman code, index 0, a block that
    /// ends inside a field, a size update not at the start of the block.
    Malformed,
    /// A dynamic table size update beyond the allowed maximum.
    TableSizeTooLarge,
}

/// One decoded field. `None` is an unknown part: a reference to a table entry that was
/// inserted before this decoder joined the connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Lengths only: a field may hold a credential.
impl fmt::Debug for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Field")
            .field("name_len", &self.name.map(<[u8]>::len))
            .field("value_len", &self.value.map(<[u8]>::len))
            .finish()
    }
}

/// What one block produced besides its fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Fields with an unknown name or value.
    pub unknown: u32,
    /// The decoded list passed `max_list`: later fields were not emitted (the table was
    /// still kept up to date).
    pub too_large: bool,
}

/// The name of a dynamic table entry.
#[derive(Clone)]
enum Name {
    /// Index into [`STATIC_TABLE`].
    Static(u8),
    /// A literal name, shared by the entries that reuse it.
    Shared(Arc<[u8]>),
    /// Taken from an entry this decoder never saw.
    Unknown,
}

impl Name {
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Name::Static(i) => Some(STATIC_TABLE[usize::from(*i)].0),
            Name::Shared(name) => Some(name),
            Name::Unknown => None,
        }
    }

    fn len(&self) -> usize {
        self.bytes().map_or(0, <[u8]>::len)
    }
}

/// A known dynamic table entry.
#[derive(Clone)]
struct Entry {
    name: Name,
    value: Box<[u8]>,
    /// name + value + 32 (an unknown name counted as 0).
    size: usize,
}

/// What an index designates.
#[derive(Clone, Copy)]
enum Ref {
    /// Index into [`STATIC_TABLE`].
    Static(usize),
    /// Position among the known entries, 0 = newest.
    Dynamic(usize),
    /// An entry older than the known ones.
    Unknown,
}

/// Where a string literal's bytes are: a range of the block or of the scratch.
#[derive(Clone, Copy)]
enum Span {
    Block(usize, usize),
    Scratch(usize, usize),
}

impl Span {
    fn get<'b>(self, block: &'b [u8], scratch: &'b [u8]) -> &'b [u8] {
        match self {
            Span::Block(start, end) => &block[start..end],
            Span::Scratch(start, end) => &scratch[start..end],
        }
    }

    fn len(self) -> usize {
        match self {
            Span::Block(start, end) | Span::Scratch(start, end) => end - start,
        }
    }
}

/// The decoding state of one direction of a connection.
#[derive(Clone)]
pub struct Decoder {
    /// Known entries, newest first.
    entries: VecDeque<Entry>,
    /// Sum of the known entries' sizes.
    known_size: usize,
    /// The encoder's table size (certain or guessed, see `size_known`).
    size: usize,
    size_known: bool,
    /// The real table may hold entries older than the known ones.
    unknown_tail: bool,
    /// SETTINGS_HEADER_TABLE_SIZE of the decoding peer, capped.
    limit: usize,
    /// A larger limit that was lowered, still accepted until the encoder follows.
    old_limit: usize,
    /// Accept any size update up to [`MAX_TABLE_SIZE`] (the SETTINGS may have been missed).
    lenient: bool,
    /// Decoded Huffman strings of the current field.
    scratch: Vec<u8>,
}

impl Decoder {
    /// A decoder at the start of a connection: empty dynamic table.
    pub fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            known_size: 0,
            size: DEFAULT_TABLE_SIZE,
            size_known: true,
            unknown_tail: false,
            limit: DEFAULT_TABLE_SIZE,
            old_limit: 0,
            lenient: false,
            scratch: Vec::new(),
        }
    }

    /// A decoder joining a connection already under way.
    pub fn midstream() -> Self {
        Self {
            size_known: false,
            unknown_tail: true,
            lenient: true,
            ..Self::new()
        }
    }

    /// The decoding peer advertised SETTINGS_HEADER_TABLE_SIZE `n` (capped at
    /// [`MAX_TABLE_SIZE`]).
    pub fn set_max_size(&mut self, n: usize) {
        let n = n.min(MAX_TABLE_SIZE);
        if n < self.limit {
            self.old_limit = self.old_limit.max(self.limit);
        }
        self.limit = n;
        if n < self.size || !self.size_known {
            // Lowered: the encoder must shrink its table to `n` before inserting again, but
            // blocks already in flight may still use the larger one. Unknown size: the limit
            // is the best guess (and an upper bound once SETTINGS were seen).
            self.size_known = false;
            self.size = n;
            self.make_room(0);
        }
    }

    /// Bytes were lost inside or between header blocks: insertions may have been missed,
    /// every entry known so far becomes unknown.
    pub fn forget(&mut self) {
        self.entries.clear();
        self.known_size = 0;
        self.unknown_tail = true;
        // A lost block may have held a size update.
        self.size_known = false;
    }

    /// Decode one complete header block. `max_list` bounds the decoded list size
    /// (name + value + 32 per field). On `Err` the rest of the block is lost and the
    /// table is forgotten.
    pub fn decode(
        &mut self,
        block: &[u8],
        max_list: usize,
        emit: &mut dyn FnMut(Field<'_>),
    ) -> Result<BlockStats, Error> {
        let result = self.decode_block(block, max_list, emit);
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch = Vec::new();
        }
        if result.is_err() {
            self.forget();
        }
        result
    }

    /// Bytes the dynamic table holds: the RFC 7541 §4.1 size of the known entries (name +
    /// value + 32 each, an unknown name counted as 0), at most [`MAX_TABLE_SIZE`].
    pub fn table_bytes(&self) -> usize {
        self.known_size
    }

    fn decode_block(
        &mut self,
        block: &[u8],
        max_list: usize,
        emit: &mut dyn FnMut(Field<'_>),
    ) -> Result<BlockStats, Error> {
        let mut list = ListBudget {
            used: 0,
            max: max_list,
            stats: BlockStats::default(),
        };
        let mut pos = 0;
        let mut fields_seen = false;
        while let Some(&first) = block.get(pos) {
            if first & 0x80 != 0 {
                // §6.1 Indexed Header Field.
                fields_seen = true;
                let index = decode_int(block, &mut pos, 7)?;
                let (name, value) = match self.lookup(index)? {
                    Ref::Static(i) => (Some(STATIC_TABLE[i].0), Some(STATIC_TABLE[i].1)),
                    Ref::Dynamic(k) => {
                        let entry = &self.entries[k];
                        (entry.name.bytes(), Some(&entry.value[..]))
                    }
                    Ref::Unknown => (None, None),
                };
                list.offer(Field { name, value }, emit);
                continue;
            }
            if first & 0xe0 == 0x20 {
                // §6.3 Dynamic Table Size Update.
                if fields_seen {
                    return Err(Error::Malformed);
                }
                let size = decode_int(block, &mut pos, 5)?;
                self.size_update(size)?;
                continue;
            }
            // §6.2.1 with incremental indexing (01), §6.2.2 without (0000), §6.2.3 never
            // indexed (0001).
            fields_seen = true;
            let indexing = first & 0x40 != 0;
            let name_index = decode_int(block, &mut pos, if indexing { 6 } else { 4 })?;
            self.scratch.clear();
            let name = if name_index == 0 {
                Ok(read_string(block, &mut pos, &mut self.scratch)?)
            } else {
                Err(self.lookup(name_index)?)
            };
            let value = read_string(block, &mut pos, &mut self.scratch)?;
            let name_bytes = match name {
                Ok(span) => Some(span.get(block, &self.scratch)),
                Err(r) => self.ref_name(r),
            };
            let value_bytes = value.get(block, &self.scratch);
            list.offer(
                Field {
                    name: name_bytes,
                    value: Some(value_bytes),
                },
                emit,
            );
            if indexing {
                self.insert(block, name, value);
            }
        }
        Ok(list.stats)
    }

    /// The entry (or unknown entry) an index designates.
    fn lookup(&self, index: usize) -> Result<Ref, Error> {
        match index {
            0 => Err(Error::Malformed),
            1..=61 => Ok(Ref::Static(index - 1)),
            _ => {
                let k = index - 62;
                if k < self.entries.len() {
                    Ok(Ref::Dynamic(k))
                } else if self.unknown_tail && self.may_hold(k) {
                    Ok(Ref::Unknown)
                } else {
                    Err(Error::Malformed)
                }
            }
        }
    }

    /// Whether the real table may have an entry at position `k` (0 = newest), given the
    /// known entries and, when certain, the table size (every entry takes 32 bytes at least).
    fn may_hold(&self, k: usize) -> bool {
        if !self.size_known {
            return true;
        }
        let older = self.size.saturating_sub(self.known_size) / ENTRY_OVERHEAD;
        k < self.entries.len() + older
    }

    fn ref_name(&self, r: Ref) -> Option<&[u8]> {
        match r {
            Ref::Static(i) => Some(STATIC_TABLE[i].0),
            Ref::Dynamic(k) => self.entries[k].name.bytes(),
            Ref::Unknown => None,
        }
    }

    /// §6.2.1: add the field just decoded (`name`: a literal or a reference) to the table.
    fn insert(&mut self, block: &[u8], name: Result<Span, Ref>, value: Span) {
        // Taken before evicting: the entry that lends its name may be the one evicted (§4.4).
        let name = match name {
            Ok(span) => Err(span),
            Err(Ref::Static(i)) => Ok(Name::Static(i as u8)),
            Err(Ref::Dynamic(k)) => Ok(self.entries[k].name.clone()),
            Err(Ref::Unknown) => Ok(Name::Unknown),
        };
        let name_len = match &name {
            Ok(name) => name.len(),
            Err(span) => span.len(),
        };
        let size = name_len + value.len() + ENTRY_OVERHEAD;
        // §4.4: evict before adding; an entry larger than the table empties it.
        self.make_room(size);
        if size <= self.size {
            let name =
                name.unwrap_or_else(|span| Name::Shared(Arc::from(span.get(block, &self.scratch))));
            let value: Box<[u8]> = value.get(block, &self.scratch).into();
            self.entries.push_front(Entry { name, value, size });
            self.known_size += size;
        }
        self.settle_tail();
    }

    /// §6.3: the encoder set its table size.
    fn size_update(&mut self, size: usize) -> Result<(), Error> {
        let allowed = if self.lenient {
            MAX_TABLE_SIZE
        } else {
            self.limit.max(self.old_limit)
        };
        if size > allowed {
            return Err(Error::TableSizeTooLarge);
        }
        if size <= self.limit {
            // The encoder follows the current limit.
            self.old_limit = 0;
        }
        self.size = size;
        self.size_known = true;
        self.make_room(0);
        self.settle_tail();
        Ok(())
    }

    /// Evict known entries, oldest first, until `room` more bytes fit in `size`.
    fn make_room(&mut self, room: usize) {
        if self.known_size + room <= self.size {
            return;
        }
        // Certain size: the real table evicts at least as much (the known sizes are lower
        // bounds), so everything older than the known entries goes too. Guessed size (maybe
        // too small): what we evict may still be live, so a later reference to it must be
        // unknown, not malformed.
        if self.size_known {
            self.unknown_tail = false;
        }
        while self.known_size + room > self.size {
            match self.entries.pop_back() {
                Some(entry) => {
                    self.known_size -= entry.size;
                    self.unknown_tail |= !self.size_known;
                }
                None => break,
            }
        }
    }

    /// With a certain size, no entry (32 bytes at least) fits beside the known ones: there
    /// is nothing older.
    fn settle_tail(&mut self) {
        if self.size_known && self.known_size + ENTRY_OVERHEAD > self.size {
            self.unknown_tail = false;
        }
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

/// Table shape only: entries hold header values.
impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("entries", &self.entries.len())
            .field("known_size", &self.known_size)
            .field("size", &self.size)
            .field("size_known", &self.size_known)
            .field("unknown_tail", &self.unknown_tail)
            .field("limit", &self.limit)
            .finish()
    }
}

/// The decoded header list of one block, against `max_list`.
struct ListBudget {
    used: usize,
    max: usize,
    stats: BlockStats,
}

impl ListBudget {
    /// Emit `field` unless the list is (or would become) too large.
    fn offer(&mut self, field: Field<'_>, emit: &mut dyn FnMut(Field<'_>)) {
        if field.name.is_none() || field.value.is_none() {
            self.stats.unknown = self.stats.unknown.saturating_add(1);
        }
        if self.stats.too_large {
            return;
        }
        let part = |p: Option<&[u8]>| p.map_or(ENTRY_OVERHEAD, <[u8]>::len);
        let cost = part(field.name) + part(field.value) + ENTRY_OVERHEAD;
        self.used = self.used.saturating_add(cost);
        if self.used > self.max {
            self.stats.too_large = true;
            return;
        }
        emit(field);
    }
}

/// §5.1: an integer with an N-bit prefix at `*pos` (the first byte's other bits are the
/// caller's). At most [`MAX_INT_CONTINUATION`] continuation bytes, a value below 2^32.
fn decode_int(buf: &[u8], pos: &mut usize, prefix: u32) -> Result<usize, Error> {
    let max_prefix = (1u32 << prefix) - 1;
    let first = u32::from(*buf.get(*pos).ok_or(Error::Malformed)?) & max_prefix;
    *pos += 1;
    if first < max_prefix {
        return Ok(first as usize);
    }
    let mut value = u64::from(max_prefix);
    for i in 0..MAX_INT_CONTINUATION {
        let byte = *buf.get(*pos).ok_or(Error::Malformed)?;
        *pos += 1;
        value += u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return match u32::try_from(value) {
                Ok(v) => Ok(v as usize),
                Err(_) => Err(Error::Malformed),
            };
        }
    }
    Err(Error::Malformed)
}

/// §5.2: a string literal at `*pos`; a Huffman one is decoded onto the end of `scratch`.
fn read_string(buf: &[u8], pos: &mut usize, scratch: &mut Vec<u8>) -> Result<Span, Error> {
    let huffman = *buf.get(*pos).ok_or(Error::Malformed)? & 0x80 != 0;
    let len = decode_int(buf, pos, 7)?;
    let start = *pos;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= buf.len())
        .ok_or(Error::Malformed)?;
    *pos = end;
    if !huffman {
        return Ok(Span::Block(start, end));
    }
    let from = scratch.len();
    huffman_decode(&buf[start..end], scratch)?;
    Ok(Span::Scratch(from, scratch.len()))
}

/// One step of the Huffman decoder: from a state (an inner node of the code tree, 0 = the
/// root), four bits lead to `next`, having decoded at most one symbol.
#[derive(Clone, Copy, Default)]
struct Step {
    next: u8,
    sym: u8,
    flags: u8,
}

/// `sym` was decoded by this step.
const STEP_SYM: u8 = 1;
/// Stopping after this step is valid: `next` is reached from the last symbol's end by at
/// most 7 one bits (§5.2 padding).
const STEP_ACCEPT: u8 = 2;
/// EOS was decoded: `Malformed` (§5.2).
const STEP_FAIL: u8 = 4;

type Steps = [[Step; 16]; 256];

fn huffman_steps() -> &'static Steps {
    static STEPS: OnceLock<Box<Steps>> = OnceLock::new();
    STEPS.get_or_init(build_huffman_steps)
}

/// The nibble state table, from [`HUFFMAN_CODES`].
fn build_huffman_steps() -> Box<Steps> {
    const LEAF: u16 = 0x8000;
    // Inner nodes; a child is another inner node's index, or LEAF | symbol. 0 (the root,
    // never a child) marks a child not yet set.
    let mut tree: Vec<[u16; 2]> = vec![[0, 0]];
    for (sym, &(code, len)) in HUFFMAN_CODES.iter().enumerate() {
        let mut node = 0;
        for i in (0..len).rev() {
            let bit = ((code >> i) & 1) as usize;
            if i == 0 {
                tree[node][bit] = LEAF | sym as u16;
            } else {
                if tree[node][bit] == 0 {
                    tree.push([0, 0]);
                    tree[node][bit] = (tree.len() - 1) as u16;
                }
                node = usize::from(tree[node][bit]);
            }
        }
    }
    // 257 leaves of a complete prefix code: 256 inner nodes, numbered as u8 states.
    assert_eq!(
        tree.len(),
        256,
        "HPACK Huffman code table is not a complete code"
    );
    // Valid padding: up to 7 one bits from the root.
    let mut accept = [false; 256];
    accept[0] = true;
    let mut node = 0;
    for _ in 0..7 {
        node = usize::from(tree[node][1]);
        accept[node] = true;
    }
    let mut steps = Box::new([[Step::default(); 16]; 256]);
    for (state, row) in steps.iter_mut().enumerate() {
        for (nibble, step) in row.iter_mut().enumerate() {
            let mut node = state;
            for i in (0..4).rev() {
                let child = tree[node][(nibble >> i) & 1];
                if child & LEAF == 0 {
                    node = usize::from(child);
                    continue;
                }
                let sym = child & !LEAF;
                if sym == 256 {
                    step.flags |= STEP_FAIL;
                    break;
                }
                // Codes are 5 bits or more: one symbol per nibble at most.
                step.sym = sym as u8;
                step.flags |= STEP_SYM;
                node = 0;
            }
            step.next = node as u8;
            if accept[node] {
                step.flags |= STEP_ACCEPT;
            }
        }
    }
    steps
}

/// §5.2: decode a Huffman string onto the end of `out`. EOS in the string, or padding
/// longer than 7 bits or not all ones, is `Malformed`.
fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    let steps = huffman_steps();
    // Codes are 5 bits or more.
    out.reserve(src.len() * 8 / 5);
    let mut state = 0;
    let mut accept = true;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0x0f] {
            let step = steps[usize::from(state)][usize::from(nibble)];
            if step.flags & STEP_FAIL != 0 {
                return Err(Error::Malformed);
            }
            if step.flags & STEP_SYM != 0 {
                out.push(step.sym);
            }
            state = step.next;
            accept = step.flags & STEP_ACCEPT != 0;
        }
    }
    if accept {
        Ok(())
    } else {
        Err(Error::Malformed)
    }
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// RFC 7541 Appendix B: (code, length in bits) of symbols 0..=255 and EOS (256), the code
/// right-aligned.
#[rustfmt::skip]
const HUFFMAN_CODES: [(u32, u8); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), // 0..
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28), // 4..
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28), // 8..
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28), // 12..
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28), // 16..
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28), // 20..
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), // 24..
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28), // 28..
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12), // 32..
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11), // 36..
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11), // 40..
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6), // 44..
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6), // 48..
    (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6), // 52..
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8), // 56..
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), // 60..
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7), // 64..
    (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7), // 68..
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7), // 72..
    (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7), // 76..
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7), // 80..
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7), // 84..
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13), // 88..
    (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6), // 92..
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5), // 96..
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6), // 100..
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7), // 104..
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5), // 108..
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5), // 112..
    (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7), // 116..
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15), // 120..
    (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28), // 124..
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20), // 128..
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23), // 132..
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23), // 136..
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23), // 140..
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23), // 144..
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23), // 148..
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23), // 152..
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24), // 156..
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22), // 160..
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21), // 164..
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24), // 168..
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23), // 172..
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21), // 176..
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23), // 180..
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22), // 184..
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23), // 188..
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), // 192..
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25), // 196..
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27), // 200..
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25), // 204..
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27), // 208..
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24), // 212..
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26), // 216..
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27), // 220..
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21), // 224..
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23), // 228..
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25), // 232..
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23), // 236..
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), // 240..
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27), // 244..
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27), // 248..
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26), // 252..
    (0x3fffffff, 30), // 256..
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoded field as owned text (`None`: unknown part).
    type Owned = (Option<String>, Option<String>);

    fn text(bytes: Option<&[u8]>) -> Option<String> {
        bytes.map(|b| String::from_utf8_lossy(b).into_owned())
    }

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        assert_eq!(digits.len() % 2, 0, "odd hex dump");
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn known(fields: &[(&str, &str)]) -> Vec<Owned> {
        fields
            .iter()
            .map(|(n, v)| (Some(n.to_string()), Some(v.to_string())))
            .collect()
    }

    fn decode_limited(
        d: &mut Decoder,
        block: &[u8],
        max_list: usize,
    ) -> Result<(Vec<Owned>, BlockStats), Error> {
        let mut out = Vec::new();
        let stats = d.decode(block, max_list, &mut |f| {
            out.push((text(f.name), text(f.value)))
        })?;
        Ok((out, stats))
    }

    fn decode(d: &mut Decoder, block: &[u8]) -> Result<(Vec<Owned>, BlockStats), Error> {
        decode_limited(d, block, usize::MAX)
    }

    /// The known entries, newest first, checking the size bookkeeping on the way.
    fn table(d: &Decoder) -> Vec<Owned> {
        let sum: usize = d.entries.iter().map(|e| e.size).sum();
        assert_eq!(sum, d.known_size);
        for e in &d.entries {
            assert_eq!(e.size, e.name.len() + e.value.len() + ENTRY_OVERHEAD);
        }
        d.entries
            .iter()
            .map(|e| (text(e.name.bytes()), text(Some(&e.value))))
            .collect()
    }

    /// One Appendix C step: a block, its decoded list, the table after it and its size.
    struct Step<'a> {
        block: &'a str,
        fields: &'a [(&'a str, &'a str)],
        table: &'a [(&'a str, &'a str)],
        size: usize,
    }

    fn run(d: &mut Decoder, steps: &[Step<'_>]) {
        for (i, step) in steps.iter().enumerate() {
            let (fields, stats) = decode(d, &hex(step.block)).unwrap();
            assert_eq!(fields, known(step.fields), "step {i}");
            assert_eq!(stats, BlockStats::default(), "step {i}");
            assert_eq!(table(d), known(step.table), "step {i}");
            assert_eq!(d.table_bytes(), step.size, "step {i}");
        }
    }

    // --- RFC 7541 Appendix C -------------------------------------------------------------

    #[test]
    fn c1_integers() {
        // C.1.1: 10, 5-bit prefix.
        let mut pos = 0;
        assert_eq!(decode_int(&[0xea], &mut pos, 5), Ok(10));
        assert_eq!(pos, 1);
        // C.1.2: 1337, 5-bit prefix.
        let mut pos = 0;
        assert_eq!(decode_int(&[0x1f, 0x9a, 0x0a], &mut pos, 5), Ok(1337));
        assert_eq!(pos, 3);
        // C.1.3: 42 at an octet boundary (8-bit prefix).
        let mut pos = 0;
        assert_eq!(decode_int(&[0x2a], &mut pos, 8), Ok(42));
        assert_eq!(pos, 1);
    }

    #[test]
    fn integer_limits() {
        // Largest accepted: 2^32 - 1.
        let mut pos = 0;
        let max = [0x7f, 0x80, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(decode_int(&max, &mut pos, 7), Ok(u32::MAX as usize));
        // One more overflows.
        let mut pos = 0;
        let over = [0x7f, 0x81, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(decode_int(&over, &mut pos, 7), Err(Error::Malformed));
        // Six continuation bytes, even with zero bits.
        let mut pos = 0;
        let long = [0x1f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
        assert_eq!(decode_int(&long, &mut pos, 5), Err(Error::Malformed));
        // Truncated.
        let mut pos = 0;
        assert_eq!(
            decode_int(&[0x1f, 0x9a], &mut pos, 5),
            Err(Error::Malformed)
        );
        let mut pos = 0;
        assert_eq!(decode_int(&[], &mut pos, 5), Err(Error::Malformed));
    }

    #[test]
    fn c2_field_representations() {
        // C.2.1 literal with indexing.
        let mut d = Decoder::new();
        run(
            &mut d,
            &[Step {
                block: "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
                fields: &[("custom-key", "custom-header")],
                table: &[("custom-key", "custom-header")],
                size: 55,
            }],
        );
        // C.2.2 literal without indexing.
        let mut d = Decoder::new();
        run(
            &mut d,
            &[Step {
                block: "040c 2f73 616d 706c 652f 7061 7468",
                fields: &[(":path", "/sample/path")],
                table: &[],
                size: 0,
            }],
        );
        // C.2.3 literal never indexed.
        let mut d = Decoder::new();
        run(
            &mut d,
            &[Step {
                block: "1008 7061 7373 776f 7264 0673 6563 7265 74",
                fields: &[("password", "secret")],
                table: &[],
                size: 0,
            }],
        );
        // C.2.4 indexed.
        let mut d = Decoder::new();
        run(
            &mut d,
            &[Step {
                block: "82",
                fields: &[(":method", "GET")],
                table: &[],
                size: 0,
            }],
        );
    }

    const REQ1: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ];
    const REQ2: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ];
    const REQ3: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];
    const REQ_TABLE1: &[(&str, &str)] = &[(":authority", "www.example.com")];
    const REQ_TABLE2: &[(&str, &str)] = &[
        ("cache-control", "no-cache"),
        (":authority", "www.example.com"),
    ];
    const REQ_TABLE3: &[(&str, &str)] = &[
        ("custom-key", "custom-value"),
        ("cache-control", "no-cache"),
        (":authority", "www.example.com"),
    ];

    const C3: [&str; 3] = [
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ];
    const C4: [&str; 3] = [
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ];

    fn request_steps(blocks: [&'static str; 3]) -> [Step<'static>; 3] {
        [
            Step {
                block: blocks[0],
                fields: REQ1,
                table: REQ_TABLE1,
                size: 57,
            },
            Step {
                block: blocks[1],
                fields: REQ2,
                table: REQ_TABLE2,
                size: 110,
            },
            Step {
                block: blocks[2],
                fields: REQ3,
                table: REQ_TABLE3,
                size: 164,
            },
        ]
    }

    #[test]
    fn c3_requests_without_huffman() {
        run(&mut Decoder::new(), &request_steps(C3));
    }

    #[test]
    fn c4_requests_with_huffman() {
        run(&mut Decoder::new(), &request_steps(C4));
    }

    const C5: [&str; 3] = [
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
         2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
         6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
         54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
         5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
         3d31",
    ];
    const C6: [&str; 3] = [
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
         2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
         77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
         9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ];

    const DATE1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
    const DATE2: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
    const LOCATION: &str = "https://www.example.com";
    const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

    fn response_steps(blocks: [&'static str; 3]) -> [Step<'static>; 3] {
        [
            Step {
                block: blocks[0],
                fields: &[
                    (":status", "302"),
                    ("cache-control", "private"),
                    ("date", DATE1),
                    ("location", LOCATION),
                ],
                table: &[
                    ("location", LOCATION),
                    ("date", DATE1),
                    ("cache-control", "private"),
                    (":status", "302"),
                ],
                size: 222,
            },
            Step {
                block: blocks[1],
                fields: &[
                    (":status", "307"),
                    ("cache-control", "private"),
                    ("date", DATE1),
                    ("location", LOCATION),
                ],
                table: &[
                    (":status", "307"),
                    ("location", LOCATION),
                    ("date", DATE1),
                    ("cache-control", "private"),
                ],
                size: 222,
            },
            Step {
                block: blocks[2],
                fields: &[
                    (":status", "200"),
                    ("cache-control", "private"),
                    ("date", DATE2),
                    ("location", LOCATION),
                    ("content-encoding", "gzip"),
                    ("set-cookie", COOKIE),
                ],
                table: &[
                    ("set-cookie", COOKIE),
                    ("content-encoding", "gzip"),
                    ("date", DATE2),
                ],
                size: 215,
            },
        ]
    }

    /// C.5 and C.6 run with SETTINGS_HEADER_TABLE_SIZE = 256.
    fn decoder_256() -> Decoder {
        let mut d = Decoder::new();
        d.set_max_size(256);
        d
    }

    #[test]
    fn c5_responses_without_huffman() {
        run(&mut decoder_256(), &response_steps(C5));
    }

    #[test]
    fn c6_responses_with_huffman() {
        run(&mut decoder_256(), &response_steps(C6));
    }

    /// The same, with the 256-byte size signalled by the encoder (certain size).
    #[test]
    fn c5_with_size_update() {
        let mut d = Decoder::new();
        d.set_max_size(256);
        let mut first = hex("3fe1 01");
        first.extend(hex(C5[0]));
        let mut c5 = response_steps(C5);
        let text = first.iter().map(|b| format!("{b:02x}")).collect::<String>();
        c5[0].block = &text;
        run(&mut d, &c5);
        assert!(d.size_known);
        // Evictions at a certain size: nothing older than the known entries.
        assert!(!d.unknown_tail);
    }

    // --- Mid-connection ------------------------------------------------------------------

    fn unknown() -> Owned {
        (None, None)
    }

    #[test]
    fn midstream_unknown_references() {
        let mut d = Decoder::midstream();
        // C.3.2 references entry 62 (:authority, inserted by C.3.1, never seen).
        let (fields, stats) = decode(&mut d, &hex(C3[1])).unwrap();
        let mut expect = known(REQ2);
        expect[3] = unknown();
        assert_eq!(fields, expect);
        assert_eq!(stats.unknown, 1);
        assert!(!stats.too_large);
        assert_eq!(table(&d), known(&[("cache-control", "no-cache")]));
        // C.3.3: 63 is :authority again (unknown); custom-key inserted.
        let (fields, stats) = decode(&mut d, &hex(C3[2])).unwrap();
        let mut expect = known(REQ3);
        expect[3] = unknown();
        assert_eq!(fields, expect);
        assert_eq!(stats.unknown, 1);
        assert_eq!(
            table(&d),
            known(&[
                ("custom-key", "custom-value"),
                ("cache-control", "no-cache")
            ])
        );
        // References to the entries seen decode; beyond them, unknown.
        let (fields, stats) = decode(&mut d, &hex("be bf c0")).unwrap();
        let mut expect = known(&[
            ("custom-key", "custom-value"),
            ("cache-control", "no-cache"),
        ]);
        expect.push(unknown());
        assert_eq!(fields, expect);
        assert_eq!(stats.unknown, 1);
    }

    /// Joining C.5 / C.6 at the second response, with evictions on the way.
    #[test]
    fn midstream_joins_responses() {
        for blocks in [C5, C6] {
            let mut d = Decoder::midstream();
            d.set_max_size(256);
            let (fields, stats) = decode(&mut d, &hex(blocks[1])).unwrap();
            let mut expect = known(&[(":status", "307")]);
            expect.extend([unknown(), unknown(), unknown()]);
            assert_eq!(fields, expect);
            assert_eq!(stats.unknown, 3);
            let (fields, stats) = decode(&mut d, &hex(blocks[2])).unwrap();
            assert_eq!(
                fields,
                vec![
                    known(&[(":status", "200")])[0].clone(),
                    unknown(),
                    known(&[("date", DATE2)])[0].clone(),
                    unknown(),
                    known(&[("content-encoding", "gzip")])[0].clone(),
                    known(&[("set-cookie", COOKIE)])[0].clone(),
                ]
            );
            assert_eq!(stats.unknown, 2);
            // The same table as a decoder that saw everything.
            assert_eq!(table(&d), known(response_steps(blocks)[2].table));
            assert_eq!(d.table_bytes(), 215);
        }
    }

    #[test]
    fn new_decoder_reference_beyond_table_is_malformed() {
        let mut d = Decoder::new();
        assert_eq!(decode(&mut d, &hex("be")), Err(Error::Malformed));
        let mut d = Decoder::new();
        decode(&mut d, &hex(C3[0])).unwrap();
        // Entry 62 exists, 63 does not.
        assert!(decode(&mut d, &hex("be")).is_ok());
        assert_eq!(decode(&mut d, &hex("bf")), Err(Error::Malformed));
        // Literal with an indexed name beyond the table, too.
        let mut d = Decoder::new();
        assert_eq!(decode(&mut d, &hex("7e 0161")), Err(Error::Malformed));
    }

    #[test]
    fn forget_makes_old_entries_unknown() {
        let mut d = Decoder::new();
        decode(&mut d, &hex(C3[0])).unwrap();
        d.forget();
        assert_eq!(d.table_bytes(), 0);
        let (fields, stats) = decode(&mut d, &hex(C3[1])).unwrap();
        let mut expect = known(REQ2);
        expect[3] = unknown();
        assert_eq!(fields, expect);
        assert_eq!(stats.unknown, 1);
        // Then C.3.3 references 63 (the forgotten :authority), never cache-control.
        let (fields, _) = decode(&mut d, &hex(C3[2])).unwrap();
        let mut expect = known(REQ3);
        expect[3] = unknown();
        assert_eq!(fields, expect);
    }

    #[test]
    fn error_forgets_the_table() {
        let mut d = Decoder::new();
        decode(&mut d, &hex(C3[0])).unwrap();
        assert_eq!(decode(&mut d, &hex("80")), Err(Error::Malformed));
        assert_eq!(d.table_bytes(), 0);
        // 62 is now unknown, not malformed.
        let (fields, stats) = decode(&mut d, &hex("be")).unwrap();
        assert_eq!(fields, vec![unknown()]);
        assert_eq!(stats.unknown, 1);
    }

    #[test]
    fn insertion_with_unknown_name() {
        let mut d = Decoder::midstream();
        // Literal with incremental indexing, name index 62 (unknown), value "abc".
        let (fields, stats) = decode(&mut d, &hex("7e 03 616263")).unwrap();
        assert_eq!(fields, vec![(None, Some("abc".to_string()))]);
        assert_eq!(stats.unknown, 1);
        assert_eq!(table(&d), vec![(None, Some("abc".to_string()))]);
        assert_eq!(d.table_bytes(), 3 + 32);
        // It shifted the indexes: 62 is the new entry, 63 unknown.
        let (fields, stats) = decode(&mut d, &hex("be bf")).unwrap();
        assert_eq!(fields, vec![(None, Some("abc".to_string())), unknown()]);
        assert_eq!(stats.unknown, 2);
        // Its unknown name, reused by a literal, stays unknown.
        let (fields, _) = decode(&mut d, &hex("7e 01 78")).unwrap();
        assert_eq!(fields, vec![(None, Some("x".to_string()))]);
    }

    #[test]
    fn midstream_size_update_makes_table_certain() {
        // After a size update to 0 the table is certainly empty.
        let mut d = Decoder::midstream();
        decode(&mut d, &hex("20")).unwrap();
        assert_eq!(decode(&mut d, &hex("be")), Err(Error::Malformed));
        // Size 100 and an 80-byte entry: no room for any older entry.
        let mut d = Decoder::midstream();
        let mut block = hex("3f45"); // size update: 31 + 69 = 100
        block.extend(hex("40 01 78 2f")); // literal, name "x", 47-byte value
        block.extend([b'v'; 47]);
        decode(&mut d, &block).unwrap();
        assert_eq!(d.table_bytes(), 80);
        assert!(decode(&mut d, &hex("be")).is_ok());
        assert_eq!(decode(&mut d, &hex("bf")), Err(Error::Malformed));
        // Size 100 and a 40-byte entry: one older entry may exist, not two.
        let mut d = Decoder::midstream();
        let mut block = hex("3f45 40 01 78 07");
        block.extend([b'v'; 7]);
        decode(&mut d, &block).unwrap();
        assert_eq!(d.table_bytes(), 40);
        assert_eq!(decode(&mut d, &hex("bf")).unwrap().0, vec![unknown()]);
        assert_eq!(decode(&mut d, &hex("c0")), Err(Error::Malformed));
        // Without a size update the size is a guess: unknown, never malformed.
        let mut d = Decoder::midstream();
        let mut block = hex("40 01 78 7f a1 1e"); // 4000-byte value
        block.extend(vec![b'v'; 4000]);
        decode(&mut d, &block).unwrap();
        assert_eq!(decode(&mut d, &hex("bf")).unwrap().0, vec![unknown()]);
    }

    #[test]
    fn midstream_accepts_large_size_updates() {
        // 65536 = 31 + 65505: e1 ff 03.
        let update = hex("3fe1ff03");
        let mut d = Decoder::midstream();
        decode(&mut d, &update).unwrap();
        assert_eq!(d.size, MAX_TABLE_SIZE);
        // Beyond MAX_TABLE_SIZE.
        let mut d = Decoder::midstream();
        assert_eq!(
            decode(&mut d, &hex("3fe2ff03")),
            Err(Error::TableSizeTooLarge)
        );
        // A new decoder only up to its SETTINGS value.
        let mut d = Decoder::new();
        assert_eq!(decode(&mut d, &update), Err(Error::TableSizeTooLarge));
        let mut d = Decoder::new();
        d.set_max_size(1 << 20);
        decode(&mut d, &update).unwrap();
        assert_eq!(d.size, MAX_TABLE_SIZE);
    }

    #[test]
    fn size_updates() {
        // 4096 = 31 + 4065: e1 1f. Accepted on a new decoder; 4097 is too large.
        let mut d = Decoder::new();
        decode(&mut d, &hex("3fe11f 82")).unwrap();
        let mut d = Decoder::new();
        assert_eq!(
            decode(&mut d, &hex("3fe21f")),
            Err(Error::TableSizeTooLarge)
        );
        // Two updates at the start; to 0 evicts everything.
        let mut d = Decoder::new();
        decode(&mut d, &hex(C3[0])).unwrap();
        let (fields, _) = decode(&mut d, &hex("20 3fe11f 82")).unwrap();
        assert_eq!(fields, known(&[(":method", "GET")]));
        assert_eq!(d.table_bytes(), 0);
        assert_eq!(decode(&mut d, &hex("be")), Err(Error::Malformed));
        // Not at the start.
        let mut d = Decoder::new();
        assert_eq!(decode(&mut d, &hex("82 20")), Err(Error::Malformed));
    }

    #[test]
    fn lowered_settings_in_flight() {
        let mut d = Decoder::new();
        decode(&mut d, &hex(C3[0])).unwrap();
        d.set_max_size(0);
        assert_eq!(d.table_bytes(), 0);
        // A block sent before the encoder saw the new SETTINGS may still use entry 62:
        // unknown, not malformed. Its size update may still use the old limit.
        assert_eq!(decode(&mut d, &hex("be")).unwrap().0, vec![unknown()]);
        decode(&mut d, &hex("3fe11f")).unwrap();
        // Once the encoder followed, the old limit is gone and the table is certain.
        decode(&mut d, &hex("20")).unwrap();
        assert_eq!(
            decode(&mut d, &hex("3fe11f")),
            Err(Error::TableSizeTooLarge)
        );
        let mut d = Decoder::new();
        d.set_max_size(0);
        decode(&mut d, &hex("20")).unwrap();
        assert_eq!(decode(&mut d, &hex("be")), Err(Error::Malformed));
    }

    #[test]
    fn entry_larger_than_table_empties_it() {
        let mut d = Decoder::new();
        decode(&mut d, &hex(C3[0])).unwrap();
        let mut block = hex("40 01 78 7f a1 1e"); // name "x", 4000-byte value: 4033 bytes
        block.extend(vec![b'v'; 4000]);
        decode(&mut d, &block).unwrap();
        assert_eq!(d.table_bytes(), 57 + 4033);
        let mut block = hex("40 01 78 7f a2 1e"); // 4001-byte value: 4034 bytes, fits
        block.extend(vec![b'v'; 4001]);
        decode(&mut d, &block).unwrap();
        assert_eq!(d.table_bytes(), 4034);
        let mut block = hex("40 01 78 7f e2 1e"); // 4065-byte value: 4098 > 4096
        block.extend(vec![b'v'; 4065]);
        decode(&mut d, &block).unwrap();
        assert_eq!(d.table_bytes(), 0);
        assert_eq!(decode(&mut d, &hex("be")), Err(Error::Malformed));
    }

    #[test]
    fn name_of_evicted_entry_is_kept() {
        // Size 100: entry A (name "aaaa", value 10 bytes: 46). A new entry reusing A's name
        // (index 62) with a 50-byte value (86) evicts A first.
        let mut d = Decoder::new();
        let mut block = hex("3f45 40 04 61616161 0a");
        block.extend([b'v'; 10]);
        block.extend(hex("7e 32"));
        block.extend([b'w'; 50]);
        decode(&mut d, &block).unwrap();
        assert_eq!(
            table(&d),
            vec![(Some("aaaa".to_string()), Some("w".repeat(50)))]
        );
    }

    // --- Bounds --------------------------------------------------------------------------

    #[test]
    fn bomb_is_bounded() {
        let mut d = Decoder::new();
        // Literal with indexing, name "x", 4000-byte value (4033 bytes in the table), then
        // 1000 references to it, then one more insertion.
        let mut block = hex("40 01 78 7f a1 1e");
        block.extend(vec![b'v'; 4000]);
        block.extend(std::iter::repeat_n(0xbe, 1000));
        block.extend(hex("40 01 79 01 7a"));
        let max_list = 64 * 1024;
        let mut emitted = 0;
        let mut bytes = 0;
        let stats = d
            .decode(&block, max_list, &mut |f| {
                emitted += 1;
                bytes += f.name.unwrap().len() + f.value.unwrap().len() + 32;
            })
            .unwrap();
        assert!(stats.too_large);
        assert_eq!(stats.unknown, 0);
        assert!(bytes <= max_list);
        assert_eq!(emitted, max_list / 4033);
        // The table followed to the end of the block.
        assert_eq!(table(&d)[0], (Some("y".to_string()), Some("z".to_string())));
        assert_eq!(d.table_bytes(), 4033 + 34);
    }

    #[test]
    fn list_limit_counts_unknown_parts() {
        let mut d = Decoder::midstream();
        // Three unknown references: 96 bytes each.
        let (fields, stats) = decode_limited(&mut d, &hex("be be be"), 200).unwrap();
        assert_eq!(fields.len(), 2);
        assert!(stats.too_large);
        assert_eq!(stats.unknown, 3);
    }

    // --- Malformed input -----------------------------------------------------------------

    #[test]
    fn malformed_blocks() {
        let cases: &[(&str, &str)] = &[
            ("80", "index 0"),
            ("40 00 01 61", "literal name... fine"),
            ("82 3fe11f", "size update after a field"),
            ("ff 80 80 80 80 80 00", "integer with 6 continuation bytes"),
            ("ff ff ff ff ff 7f", "integer above 2^32"),
            ("04 0d 2f", "string longer than the block"),
            ("00 81 18 00", "Huffman padding with zero bits"),
            ("00 82 07 ff 00", "Huffman padding of 11 bits"),
            ("00 84 ff ff ff ff 00", "EOS in a Huffman string"),
            ("00 80", "block ends before the value"),
            ("40", "block ends before the name"),
        ];
        for (block, why) in cases {
            let mut d = Decoder::new();
            let result = decode(&mut d, &hex(block));
            if why.ends_with("fine") {
                assert!(result.is_ok(), "{why}");
            } else {
                assert_eq!(result, Err(Error::Malformed), "{why}");
            }
        }
        // Valid padding: '0' (00000) + 111; 'a' (00011) + 111.
        let mut d = Decoder::new();
        let (fields, _) = decode(&mut d, &hex("00 81 07 81 1f")).unwrap();
        assert_eq!(fields, known(&[("0", "a")]));
    }

    #[test]
    fn truncated_blocks_never_panic() {
        for blocks in [C3, C4, C5, C6] {
            let mut d = decoder_256();
            for block in blocks {
                let block = hex(block);
                for cut in 0..block.len() {
                    let mut copy = d.clone();
                    match decode(&mut copy, &block[..cut]) {
                        Ok(_) => {}
                        Err(_) => assert_eq!(copy.table_bytes(), 0),
                    }
                    let mut mid = Decoder::midstream();
                    let _ = decode(&mut mid, &block[cut..]);
                }
                decode(&mut d, &block).unwrap();
            }
        }
    }

    // --- Huffman -------------------------------------------------------------------------

    /// Test-only encoder.
    fn huffman_encode(src: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut acc: u64 = 0;
        let mut bits = 0;
        for &b in src {
            let (code, len) = HUFFMAN_CODES[usize::from(b)];
            acc = (acc << len) | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) | (0xff >> bits)) as u8);
        }
        out
    }

    #[test]
    fn huffman_table_is_the_canonical_code() {
        // Appendix B is a canonical code: sorted by (length, symbol), each code is the
        // previous one plus one, shifted to its length. This checks every transcribed
        // code against its length.
        let mut order: Vec<usize> = (0..257).collect();
        order.sort_by_key(|&s| (HUFFMAN_CODES[s].1, s));
        let mut next: u32 = 0;
        let mut prev_len = HUFFMAN_CODES[order[0]].1;
        for s in order {
            let (code, len) = HUFFMAN_CODES[s];
            next <<= len - prev_len;
            prev_len = len;
            assert_eq!(code, next, "symbol {s}");
            next += 1;
        }
        // Complete (Kraft sum 1), and EOS is 30 ones.
        let kraft: u64 = HUFFMAN_CODES.iter().map(|&(_, l)| 1u64 << (30 - l)).sum();
        assert_eq!(kraft, 1 << 30);
        assert_eq!(HUFFMAN_CODES[256], (0x3fff_ffff, 30));
        assert_eq!(HUFFMAN_CODES[usize::from(b'a')], (0x3, 5));
        assert_eq!(HUFFMAN_CODES[usize::from(b' ')], (0x14, 6));
    }

    #[test]
    fn huffman_round_trips_every_symbol() {
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        huffman_decode(&huffman_encode(&all), &mut out).unwrap();
        assert_eq!(out, all);
        for b in 0..=255u8 {
            for n in 1..4 {
                let src = vec![b; n];
                out.clear();
                huffman_decode(&huffman_encode(&src), &mut out).unwrap();
                assert_eq!(out, src);
            }
        }
        out.clear();
        huffman_decode(&[], &mut out).unwrap();
        assert!(out.is_empty());
        // A whole byte of padding is too much.
        let mut long = huffman_encode(b"0");
        long.push(0xff);
        assert_eq!(huffman_decode(&long, &mut out), Err(Error::Malformed));
    }

    #[test]
    fn field_debug_hides_contents() {
        let f = Field {
            name: Some(b"authorization"),
            value: Some(b"Bearer secret"),
        };
        let shown = format!("{f:?}");
        assert!(!shown.contains("secret") && !shown.contains("authorization"));
        assert!(shown.contains("13"));
        let mut d = Decoder::new();
        decode(&mut d, &hex(C3[0])).unwrap();
        assert!(!format!("{d:?}").contains("example"));
    }

    // --- Randomized ----------------------------------------------------------------------

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn encode_int(out: &mut Vec<u8>, flags: u8, prefix: u32, mut v: usize) {
        let max = (1usize << prefix) - 1;
        if v < max {
            out.push(flags | v as u8);
            return;
        }
        out.push(flags | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }

    fn encode_string(out: &mut Vec<u8>, rng: &mut XorShift, s: &[u8]) {
        if rng.below(2) == 0 {
            let h = huffman_encode(s);
            encode_int(out, 0x80, 7, h.len());
            out.extend(h);
        } else {
            encode_int(out, 0, 7, s.len());
            out.extend(s);
        }
    }

    /// A block of plausible representations: size updates, references near the table's
    /// end, literals of all kinds, some large.
    fn structured_block(rng: &mut XorShift) -> Vec<u8> {
        let mut out = Vec::new();
        if rng.below(8) == 0 {
            encode_int(&mut out, 0x20, 5, rng.below(70_000));
        }
        for _ in 0..rng.below(12) {
            let index = 1 + rng.below(90);
            match rng.below(4) {
                0 => encode_int(&mut out, 0x80, 7, index),
                kind => {
                    let (flags, prefix) = [(0x40, 6), (0x00, 4), (0x10, 4)][kind - 1];
                    let len = if rng.below(10) == 0 {
                        rng.below(5000)
                    } else {
                        rng.below(20)
                    };
                    let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    if rng.below(3) == 0 {
                        encode_int(&mut out, flags, prefix, 0);
                        encode_string(&mut out, rng, &bytes[..len / 3]);
                    } else {
                        encode_int(&mut out, flags, prefix, index);
                    }
                    encode_string(&mut out, rng, &bytes);
                }
            }
        }
        out
    }

    #[test]
    fn random_blocks_never_panic() {
        let corpus: Vec<Vec<u8>> = [C3, C4, C5, C6].iter().flatten().map(|b| hex(b)).collect();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut decoders = [Decoder::new(), Decoder::midstream(), decoder_256()];
        let (mut ok, mut err) = (0, 0);
        for _ in 0..10_000 {
            let block = match rng.below(3) {
                0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
                1 => {
                    let mut b = corpus[rng.below(corpus.len())].clone();
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(b.len());
                        b[i] = rng.next() as u8;
                    }
                    let cut = rng.below(b.len() + 1);
                    b.truncate(cut);
                    b
                }
                _ => structured_block(&mut rng),
            };
            let d = &mut decoders[rng.below(3)];
            match rng.below(50) {
                0 => d.forget(),
                1 => d.set_max_size(rng.below(100_000)),
                _ => {}
            }
            let max_list = 1 + rng.below(20_000);
            let mut listed = 0;
            let result = d.decode(&block, max_list, &mut |f| {
                listed += f.name.map_or(32, <[u8]>::len) + f.value.map_or(32, <[u8]>::len) + 32;
            });
            match result {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
            assert!(listed <= max_list);
            assert!(d.table_bytes() <= MAX_TABLE_SIZE);
            assert!(d.table_bytes() <= d.size);
            table(d);
        }
        // Both paths were exercised.
        assert!(ok > 1000 && err > 1000, "ok {ok}, err {err}");
    }
}
