//! STUB: to be written (parser of the redis protocol).

use super::{Output, Parser, Protocol, Segment};
use crate::http::Side;

pub struct RedisParser;

impl RedisParser {
    pub fn new() -> Self {
        Self
    }
}

pub fn looks_like_command(_b: &[u8]) -> bool {
    false
}

impl Parser for RedisParser {
    fn protocol(&self) -> Protocol {
        Protocol::Redis
    }
    fn feed(&mut self, _side: Side, _segment: Segment<'_>, _out: &mut Output) {}
}
