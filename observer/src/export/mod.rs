//! Exports: Prometheus metrics, the HTTP endpoint, the JSON-lines stream.
pub mod jsonl;
pub mod metrics;
pub mod server;
