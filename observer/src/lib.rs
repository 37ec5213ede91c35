//! observer: an eBPF API traffic observer.
//!
//! Modules follow the data flow: [`capture`] (kernel records) → [`conn`] (connections) →
//! [`http`] (parsers) → [`exchange`] → [`identity`] → [`session`] → [`score`] →
//! [`export`]. [`agent`] wires them for `observer run`; [`cli`] holds the other
//! subcommands.

pub mod agent;
pub mod benchmark;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conn;
pub mod downstream;
pub mod exchange;
pub mod export;
pub mod fleet;
pub mod http;
pub mod identity;
pub mod layers;
pub mod private_file;
pub mod route;
pub mod score;
pub mod session;
pub mod workload;
