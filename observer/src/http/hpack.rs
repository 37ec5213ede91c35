//! HPACK (RFC 7541) header block decoding, for the HTTP/2 parser.
//!
//! API contract (implementation to come):
//! * one [`Decoder`] per direction of a connection (its own dynamic table);
//! * a decoder that joined a connection under way ([`Decoder::midstream`]) knows only the
//!   entries it saw inserted; a reference beyond them yields an unknown field, never a
//!   wrong one;
//! * fields are handed to a callback as borrowed bytes, so nothing is allocated for the
//!   fields the caller drops.

/// The dynamic table size both ends start with (RFC 7540 §6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// Largest dynamic table kept, whatever SETTINGS_HEADER_TABLE_SIZE a peer advertised.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
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

/// The decoding state of one direction of a connection.
pub struct Decoder {
    _private: (),
}

impl Decoder {
    /// A decoder at the start of a connection: empty dynamic table.
    pub fn new() -> Self {
        Self { _private: () }
    }

    /// A decoder joining a connection already under way.
    pub fn midstream() -> Self {
        Self { _private: () }
    }

    /// The decoding peer advertised SETTINGS_HEADER_TABLE_SIZE `n` (capped at
    /// [`MAX_TABLE_SIZE`]).
    pub fn set_max_size(&mut self, _n: usize) {}

    /// Bytes were lost inside or between header blocks: insertions may have been missed,
    /// every entry known so far becomes unknown.
    pub fn forget(&mut self) {}

    /// Decode one complete header block. `max_list` bounds the decoded list size
    /// (name + value + 32 per field). On `Err` the rest of the block is lost and the
    /// table is forgotten.
    pub fn decode(
        &mut self,
        _block: &[u8],
        _max_list: usize,
        _emit: &mut dyn FnMut(Field<'_>),
    ) -> Result<BlockStats, Error> {
        Err(Error::Malformed)
    }

    /// Bytes the dynamic table holds.
    pub fn table_bytes(&self) -> usize {
        0
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}
