//! Exports: Prometheus metrics, the HTTP endpoint, the JSON-lines stream.
pub mod control;
pub mod jsonl;
pub mod metrics;
pub mod server;
