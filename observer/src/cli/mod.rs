//! Subcommands that talk to a running agent over its HTTP endpoint.
pub mod client;
pub mod sessions;
