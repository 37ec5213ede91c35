//! HTTP/1.0 and HTTP/1.1 (placeholder: being written).
use std::sync::Arc;

use super::{
    Detection, HeaderAllowlist, ParserLimits, ParserOutput, Protocol, Segment, Side, StreamParser,
};

pub fn detect(_first: &[u8]) -> Detection {
    Detection::Unknown
}

pub struct Http1Parser;

impl Http1Parser {
    pub fn new(_limits: ParserLimits, _allowlist: Arc<HeaderAllowlist>) -> Self {
        Self
    }
}

impl StreamParser for Http1Parser {
    fn protocol(&self) -> Protocol {
        Protocol::Http1
    }
    fn feed(&mut self, _side: Side, _segment: Segment<'_>, _out: &mut ParserOutput) {}
    fn finish(&mut self, _ts_ns: u64, _out: &mut ParserOutput) {}
}
