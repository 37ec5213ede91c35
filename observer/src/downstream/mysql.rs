//! STUB: to be written (parser of the mysql protocol).

use super::{Output, Parser, Protocol, Segment};
use crate::http::Side;

pub struct MysqlParser;

impl MysqlParser {
    pub fn new() -> Self {
        Self
    }
}

pub fn looks_like_greeting(_b: &[u8]) -> bool {
    false
}

impl Parser for MysqlParser {
    fn protocol(&self) -> Protocol {
        Protocol::Mysql
    }
    fn feed(&mut self, _side: Side, _segment: Segment<'_>, _out: &mut Output) {}
}
