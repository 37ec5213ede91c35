//! STUB: to be written (parser of the postgres protocol).

use super::{Output, Parser, Protocol, Segment};
use crate::http::Side;

pub struct PostgresParser;

impl PostgresParser {
    pub fn new() -> Self {
        Self
    }
}

pub fn looks_like_startup(_b: &[u8]) -> bool {
    false
}

impl Parser for PostgresParser {
    fn protocol(&self) -> Protocol {
        Protocol::Postgres
    }
    fn feed(&mut self, _side: Side, _segment: Segment<'_>, _out: &mut Output) {}
}
