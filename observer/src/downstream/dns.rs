//! STUB: to be written (parser of the dns protocol).

use super::{Output, Parser, Protocol, Segment};
use crate::http::Side;

pub struct DnsParser;

impl DnsParser {
    pub fn new(_datagram: bool) -> Self {
        Self
    }
}

pub fn looks_like_query(_b: &[u8]) -> bool {
    false
}

pub fn looks_like_tcp_query(_b: &[u8]) -> bool {
    false
}

impl Parser for DnsParser {
    fn protocol(&self) -> Protocol {
        Protocol::Dns
    }
    fn feed(&mut self, _side: Side, _segment: Segment<'_>, _out: &mut Output) {}
}
