//! `[sessions]`, and the config tables a [`super::SessionTable`] is built from.

use serde::{Deserialize, Serialize};

use super::dims::ClientIpMode;
use crate::{identity::IdentityConfig, score::ScoreConfig};

/// `[sessions]`: how sessions are kept.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// A session unused this long is dropped, seconds.
    pub idle_ttl_secs: u64,
    /// A session older than this is dropped however active it is, seconds.
    pub max_age_secs: u64,
    /// Most sessions kept; beyond it the least recently used are dropped.
    pub max_sessions: usize,
    /// Most client networks kept per session (least recently seen dropped).
    pub max_networks: usize,
    /// Most user-agent families kept per session.
    pub max_agents: usize,
    /// Most routes kept per session.
    pub max_routes: usize,
    /// Most frozen fingerprints.
    pub max_frozen: usize,
    /// `truncate` (keep the network), `full` or `drop`.
    pub client_ip: ClientIpMode,
    /// Bits kept of IPv4 client addresses in `truncate` mode.
    pub ipv4_prefix: u8,
    /// Bits kept of IPv6 client addresses in `truncate` mode.
    pub ipv6_prefix: u8,
    /// Keep outbound sessions (calls this host makes).
    pub track_outbound: bool,
    /// Sessions exported as `api_observer_session_health_score` (the riskiest).
    pub metrics_top_k: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_ttl_secs: 1800,
            max_age_secs: 86_400,
            max_sessions: 20_000,
            max_networks: 16,
            max_agents: 8,
            max_routes: 32,
            max_frozen: 10_000,
            client_ip: ClientIpMode::Truncate,
            ipv4_prefix: 24,
            ipv6_prefix: 48,
            track_outbound: true,
            metrics_top_k: 20,
        }
    }
}

impl SessionConfig {
    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("sessions.idle_ttl_secs", self.idle_ttl_secs as usize),
            ("sessions.max_age_secs", self.max_age_secs as usize),
            ("sessions.max_sessions", self.max_sessions),
            ("sessions.max_networks", self.max_networks),
            ("sessions.max_agents", self.max_agents),
            ("sessions.max_routes", self.max_routes),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if self.ipv4_prefix > 32 {
            return Err(("sessions.ipv4_prefix", "must be 0..=32".into()));
        }
        if self.ipv6_prefix > 128 {
            return Err(("sessions.ipv6_prefix", "must be 0..=128".into()));
        }
        Ok(())
    }
}

/// The config tables the table is built from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SessionTableConfig {
    pub identity: IdentityConfig,
    pub sessions: SessionConfig,
    pub scoring: ScoreConfig,
    pub tiers: crate::identity::TierConfig,
    /// Where durable state (frozen credentials) is kept; `None`: memory only.
    pub state_dir: Option<std::path::PathBuf>,
}
