//! Exports: Prometheus metrics, the HTTP surfaces, the JSON-lines streams, the audit,
//! OTLP.
pub mod audit;
pub mod control;
pub mod jsonl;
pub mod metrics;
pub mod otlp;
pub mod routes;
pub mod server;
pub mod snapshot;
pub mod surface;
pub mod tls;
