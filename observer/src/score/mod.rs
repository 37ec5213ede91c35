//! Scoring: signals, health score (100 healthy .. 0), state and reasons.
//!
//! Scoring knows nothing of how sessions are stored: the session stage gathers the facts
//! of one session (or one view across credentials) at one instant into a [`ScoreInput`],
//! and [`evaluate`] turns them into an [`Assessment`]. Thresholds and weights are in
//! [`ScoreConfig`] (`[scoring]`); defaults cite where their numbers come from.
//!
//! The score is 100 minus the weights of the active signals (at least 0). A session is
//! healthy at `healthy_min` or above, suspicious at `suspicious_min` or above, unhealthy
//! below. Every signal's default weight is enough to leave the healthy state on its own.

mod trust;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use trust::{TrustError, TrustedNetworks};

/// Health of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Healthy,
    Suspicious,
    Unhealthy,
}

impl HealthState {
    pub const ALL: [Self; 3] = [Self::Healthy, Self::Suspicious, Self::Unhealthy];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Suspicious => "suspicious",
            Self::Unhealthy => "unhealthy",
        }
    }
}

macro_rules! reasons {
    ($($variant:ident / $field:ident => $code:literal, $weight:literal, $doc:literal;)*) => {
        /// Why a session is not (fully) healthy. The codes are stable.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Reason {
            $(#[doc = $doc] $variant,)*
        }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            /// The reason code (also the metrics label).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $code,)*
                }
            }
        }

        /// `[scoring.weights]`: points taken from the score (100) by each signal.
        #[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
        #[serde(deny_unknown_fields, default)]
        pub struct Weights {
            $(#[doc = $doc] pub $field: u8,)*
        }

        impl Default for Weights {
            fn default() -> Self {
                Self { $($field: $weight,)* }
            }
        }

        impl Weights {
            pub fn of(&self, r: Reason) -> u8 {
                match r {
                    $(Reason::$variant => self.$field,)*
                }
            }
        }
    };
}

reasons! {
    MultiNetwork / multi_network => "multi_network", 25,
        "The credential was used from several client networks within the window.";
    ConcurrentNetworks / concurrent_networks => "concurrent_networks", 60,
        "The credential was used from several networks at once: its network switched back and forth within seconds (a shared or stolen credential, not a client that moved).";
    FleetNetworks / fleet_networks => "fleet_networks", 60,
        "Across the fleet the credential was used on several nodes from several client networks within the window (each node alone may have seen one).";
    MultiAgent / multi_agent => "multi_agent", 25,
        "The credential was used by several client programs (user-agent families) within the window.";
    NetworkAgentSwitch / network_agent_switch => "network_agent_switch", 35,
        "Network and user agent changed together to values new to the session.";
    RateSpike / rate_spike => "rate_spike", 25,
        "Request rate far above the session's (or a route's) own baseline.";
    RateLimit / rate_limit => "rate_limit", 30,
        "Request rate above the absolute limit.";
    OverTier / over_tier => "over_tier", 25,
        "Consumption above the credential's access tier (rate or daily quota).";
    AuthFailures / auth_failures => "auth_failures", 30,
        "A burst of 401/403 responses.";
    BruteForce / brute_force => "brute_force", 60,
        "Sustained guessing: many 401/403 responses (`brute_force_min` in the window) making up most of the requests, e.g. a login form tried over and over.";
    Enumeration / enumeration => "enumeration", 55,
        "Many distinct object ids requested on one route.";
    NotFoundRatio / not_found_ratio => "not_found_ratio", 25,
        "A high share of 404 responses.";
    ExpiredJwtAccepted / expired_jwt_accepted => "expired_jwt_accepted", 55,
        "An expired JWT was answered with 2xx.";
    JwtNotYetValid / jwt_not_yet_valid => "jwt_not_yet_valid", 55,
        "A JWT used before its `nbf` was answered with 2xx.";
    JwtAlgNone / jwt_alg_none => "jwt_alg_none", 60,
        "An unsigned JWT (`alg: none`).";
    CredentialInQuery / credential_in_query => "credential_in_query", 25,
        "A credential was sent in the query string by a client on an untrusted network (from trusted networks it is only a finding).";
    PlaintextCredential / plaintext_credential => "plaintext_credential", 25,
        "A credential was sent without TLS by a client on an untrusted network (from trusted networks it is only a finding).";
    FrozenCredential / frozen_credential => "frozen_credential", 100,
        "A frozen credential was used.";
    CredentialStuffing / credential_stuffing => "credential_stuffing", 60,
        "Network view: many distinct credentials failed (401/403, never succeeding) from one client network.";
    PasswordSpraying / password_spraying => "password_spraying", 60,
        "Route view: many distinct identities failed with few attempts each on one route.";
    TokenRotation / token_rotation => "token_rotation", 60,
        "Network view: many fresh short-lived credentials from one network walking object ids on the same route.";
    DownstreamHeavy / downstream_heavy => "downstream_heavy", 35,
        "The session's requests on a route caused far more database calls per request than the route's baseline (the median over other sessions): scraping, or an abused query.";
    DbAuthErrors / db_auth_errors => "db_auth_errors", 30,
        "The session's requests caused database authentication or permission errors.";
}

/// `[scoring]`: thresholds and weights of the signals.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreConfig {
    /// Seconds between scoring passes (the agent's loop).
    pub interval_secs: u64,
    /// Scores at or above this are healthy.
    pub healthy_min: u8,
    /// Scores at or above this (and below `healthy_min`) are suspicious; below, unhealthy.
    pub suspicious_min: u8,
    /// The window of the windowed signals, seconds.
    pub window_secs: u64,
    /// Distinct client networks within the window that make `multi_network`.
    pub multi_network_min: usize,
    /// `concurrent_networks`: within this many seconds...
    pub concurrent_secs: u64,
    /// ...the credential's network changed at least this many times between at least two
    /// networks, or at least three networks were used. A client that moves changes once.
    pub concurrent_min_switches: u32,
    /// Distinct user-agent families within the window that make `multi_agent`.
    pub multi_agent_min: usize,
    /// Requests a session needs before a network+agent switch is noted.
    pub switch_min_requests: u64,
    /// Time constant of the current request rate, seconds.
    pub rate_short_secs: f64,
    /// Time constant of the baseline request rate, seconds.
    pub rate_baseline_secs: f64,
    /// Age a session (or route) needs before its baseline is trusted, seconds.
    pub warmup_secs: u64,
    /// Requests a session (or route) needs before its baseline is trusted.
    pub warmup_requests: u64,
    /// `rate_spike` when the current rate exceeds the baseline by this factor...
    pub rate_spike_factor: f64,
    /// ...and is at least this many requests per second.
    pub rate_spike_min: f64,
    /// `rate_limit` when one credential's current rate exceeds this many requests per
    /// second (0: off). Per-consumer limits belong in `[tiers]`.
    pub rate_limit: f64,
    /// 401/403 responses within the window that make `auth_failures`...
    pub auth_failures_min: u64,
    /// ...when they are at least this share of the window's requests.
    pub auth_failures_ratio: f64,
    /// 401/403 within the window that make `brute_force`, when they are at least half of
    /// the window's requests.
    pub brute_force_min: u64,
    /// Distinct ids on one route within the window that make `enumeration`.
    pub enumeration_min_ids: u64,
    /// Requests within the window before `not_found_ratio` is considered...
    pub not_found_min_requests: u64,
    /// ...and the share of 404s that makes it.
    pub not_found_ratio: f64,
    /// Clock skew allowed around JWT `exp` / `nbf`, seconds.
    pub jwt_leeway_secs: u64,
    /// `credential_stuffing`: distinct credentials failing (and never succeeding) from one
    /// network within the window...
    pub stuffing_min_credentials: u64,
    /// ...that are at least this share of the credentials seen from it.
    pub stuffing_ratio: f64,
    /// `password_spraying`: distinct identities failing on one route within the window...
    pub spraying_min_identities: u64,
    /// ...each with at most this many failures...
    pub spraying_max_attempts: u64,
    /// ...and at least this share of the identities seen on the route.
    pub spraying_ratio: f64,
    /// `token_rotation`: credentials first seen within the window, each used at most
    /// `rotation_max_requests` times, from one network...
    pub rotation_min_credentials: u64,
    pub rotation_max_requests: u64,
    /// ...walking at least this many distinct ids on one route...
    pub rotation_min_ids: u64,
    /// ...which takes at least this share of the network's requests.
    pub rotation_route_share: f64,
    /// Client networks trusted by default: credentials in plaintext or in query strings
    /// from them are findings about the API, not evidence about the session. CIDRs.
    pub trusted_networks: Vec<String>,
    pub weights: Weights,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            interval_secs: 5,
            healthy_min: 80,
            suspicious_min: 50,
            window_secs: 300,
            multi_network_min: 3,
            concurrent_secs: 60,
            concurrent_min_switches: 3,
            multi_agent_min: 3,
            switch_min_requests: 10,
            rate_short_secs: 10.0,
            rate_baseline_secs: 600.0,
            warmup_secs: 300,
            warmup_requests: 50,
            rate_spike_factor: 10.0,
            rate_spike_min: 2.0,
            rate_limit: 200.0,
            auth_failures_min: 10,
            auth_failures_ratio: 0.2,
            // fail2ban: 5 failures in 10 minutes bans; AWS WAF ATP: >10 failed logins per
            // IP in 10 minutes. Ten times that within one session is guessing, not typos.
            brute_force_min: 50,
            enumeration_min_ids: 100,
            not_found_min_requests: 20,
            not_found_ratio: 0.5,
            jwt_leeway_secs: 60,
            // AWS WAF ATP: more than 10 failed logins per IP in 10 minutes; fail2ban 5 in
            // 10 minutes (counted per credential here, so higher).
            stuffing_min_credentials: 11,
            stuffing_ratio: 0.5,
            // CrowdSec's user-enumeration scenarios count distinct users per source.
            spraying_min_identities: 10,
            spraying_max_attempts: 3,
            spraying_ratio: 0.5,
            // Akto's enumeration detector: more than 50 distinct values per endpoint in
            // 5 minutes; CrowdSec crawl: 40 distinct pages.
            rotation_min_credentials: 20,
            rotation_max_requests: 5,
            rotation_min_ids: 50,
            rotation_route_share: 0.8,
            trusted_networks: TrustedNetworks::DEFAULT
                .iter()
                .map(|s| s.to_string())
                .collect(),
            weights: Weights::default(),
        }
    }
}

impl ScoreConfig {
    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |key, why: &str| Err((key, why.to_string()));
        if self.interval_secs == 0 {
            return bad("scoring.interval_secs", "must be at least 1");
        }
        if self.healthy_min > 100 || self.suspicious_min > self.healthy_min {
            return bad(
                "scoring.suspicious_min",
                "need suspicious_min <= healthy_min <= 100",
            );
        }
        if self.window_secs < 10 {
            return bad("scoring.window_secs", "must be at least 10");
        }
        if self.concurrent_secs == 0 || self.concurrent_secs > self.window_secs {
            return bad("scoring.concurrent_secs", "must be 1..=window_secs");
        }
        for (key, v) in [
            ("scoring.rate_short_secs", self.rate_short_secs),
            ("scoring.rate_baseline_secs", self.rate_baseline_secs),
            ("scoring.rate_spike_factor", self.rate_spike_factor),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(key, "must be a positive number");
            }
        }
        if !(self.rate_limit.is_finite() && self.rate_limit >= 0.0) {
            return bad("scoring.rate_limit", "must be 0 (off) or a positive number");
        }
        for (key, v) in [
            ("scoring.auth_failures_ratio", self.auth_failures_ratio),
            ("scoring.not_found_ratio", self.not_found_ratio),
            ("scoring.stuffing_ratio", self.stuffing_ratio),
            ("scoring.spraying_ratio", self.spraying_ratio),
            ("scoring.rotation_route_share", self.rotation_route_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(key, "must be between 0 and 1");
            }
        }
        if let Err(e) = TrustedNetworks::parse(&self.trusted_networks) {
            return Err(("scoring.trusted_networks", e.to_string()));
        }
        Ok(())
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }

    pub fn state_of(&self, score: u8) -> HealthState {
        if score >= self.healthy_min {
            HealthState::Healthy
        } else if score >= self.suspicious_min {
            HealthState::Suspicious
        } else {
            HealthState::Unhealthy
        }
    }
}

/// One session's assessment at one instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Assessment {
    pub score: u8,
    pub state: HealthState,
    pub reasons: Vec<Reason>,
}

/// A request rate and, once the series has warmed up, its learned baseline.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rate {
    pub current: f64,
    pub baseline: Option<f64>,
}

/// What one credential did within the window, seen from a view across credentials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CredentialUse {
    pub requests: u64,
    pub failures: u64,
    pub successes: u64,
    /// First seen within the window (a fresh credential).
    pub fresh: bool,
}

/// The facts of a view across credentials (per client network or per route).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AcrossFacts {
    /// Credentials seen within the window.
    pub credentials: Vec<CredentialUse>,
    /// Requests of the view within the window.
    pub requests: u64,
    /// The route with most distinct ids: (distinct ids, its requests), within the window.
    pub top_id_route: (u64, u64),
}

/// The facts of one session (or view) at one instant: everything scoring reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScoreInput {
    /// Traffic this host serves (outbound sessions skip the client-side signals).
    pub inbound: bool,
    /// Distinct client networks within the window.
    pub networks: usize,
    /// Network changes within `concurrent_secs`, and the distinct networks then.
    pub network_switches: u32,
    pub recent_networks: usize,
    /// Distinct user-agent families within the window.
    pub agents: usize,
    pub network_agent_switch: bool,
    /// The session's rate and each route's.
    pub rate: Rate,
    pub route_rates: Vec<Rate>,
    /// Within the window: requests, 401/403, 404.
    pub requests: u64,
    pub auth_failures: u64,
    pub not_found: u64,
    /// Most distinct ids on one route within the window.
    pub max_route_ids: u64,
    /// Event signals seen within the window (JWT faults, exposure from untrusted networks).
    pub events: Vec<Reason>,
    /// Use of a frozen credential.
    pub frozen_use: bool,
    /// Consumption over the credential's tier.
    pub over_tier: bool,
    /// Views across credentials: which view, and its facts.
    pub across: Option<(ViewKind, AcrossFacts)>,
    /// Fleet mode: what the other nodes saw of the credential within the window.
    pub fleet: Option<FleetFacts>,
}

/// The fleet's view of one credential within the window (`[fleet]`): nodes that used
/// it (this one included when it did) and the union of their client networks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetFacts {
    pub nodes: usize,
    pub networks: usize,
}

/// Which view across credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ViewKind {
    Network,
    Route,
}

/// Current rate far above the baseline.
fn spiking(cfg: &ScoreConfig, r: &Rate) -> bool {
    r.baseline
        .is_some_and(|b| r.current >= cfg.rate_spike_min && r.current > cfg.rate_spike_factor * b)
}

fn share(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 / of as f64
    }
}

/// The signals of a view across credentials.
fn across_signals(kind: ViewKind, f: &AcrossFacts, cfg: &ScoreConfig, out: &mut Vec<Reason>) {
    let seen = f.credentials.len() as u64;
    let failing = |max_attempts: u64| {
        f.credentials
            .iter()
            .filter(|c| c.failures > 0 && c.successes == 0 && c.failures <= max_attempts)
            .count() as u64
    };
    match kind {
        ViewKind::Network => {
            let n = failing(u64::MAX);
            if n >= cfg.stuffing_min_credentials.max(2) && share(n, seen) >= cfg.stuffing_ratio {
                out.push(Reason::CredentialStuffing);
            }
            let fresh = f
                .credentials
                .iter()
                .filter(|c| c.fresh && c.requests <= cfg.rotation_max_requests)
                .count() as u64;
            let (ids, route_requests) = f.top_id_route;
            if fresh >= cfg.rotation_min_credentials.max(2)
                && ids >= cfg.rotation_min_ids.max(1)
                && share(route_requests, f.requests) >= cfg.rotation_route_share
            {
                out.push(Reason::TokenRotation);
            }
        }
        ViewKind::Route => {
            let n = failing(cfg.spraying_max_attempts.max(1));
            if n >= cfg.spraying_min_identities.max(2) && share(n, seen) >= cfg.spraying_ratio {
                out.push(Reason::PasswordSpraying);
            }
        }
    }
}

/// The signals active in `input`.
pub fn signals(input: &ScoreInput, cfg: &ScoreConfig) -> Vec<Reason> {
    let mut out = Vec::new();
    if let Some((kind, facts)) = &input.across {
        across_signals(*kind, facts, cfg, &mut out);
        return out;
    }
    let inbound = input.inbound;

    // Dimensions used at once.
    if inbound && input.networks >= cfg.multi_network_min.max(2) {
        out.push(Reason::MultiNetwork);
    }
    if inbound
        && ((input.recent_networks >= 2
            && input.network_switches >= cfg.concurrent_min_switches.max(2))
            || input.recent_networks >= 3)
    {
        out.push(Reason::ConcurrentNetworks);
    }
    if inbound && input.fleet.is_some_and(|f| f.nodes >= 2 && f.networks >= 2) {
        out.push(Reason::FleetNetworks);
    }
    if input.agents >= cfg.multi_agent_min.max(2) {
        out.push(Reason::MultiAgent);
    }
    if inbound && input.network_agent_switch {
        out.push(Reason::NetworkAgentSwitch);
    }

    // Rates and consumption.
    if spiking(cfg, &input.rate) || input.route_rates.iter().any(|r| spiking(cfg, r)) {
        out.push(Reason::RateSpike);
    }
    if cfg.rate_limit > 0.0 && input.rate.current > cfg.rate_limit {
        out.push(Reason::RateLimit);
    }
    if input.over_tier {
        out.push(Reason::OverTier);
    }

    // Outcomes within the window.
    let requests = input.requests;
    if input.auth_failures >= cfg.auth_failures_min.max(1)
        && share(input.auth_failures, requests) >= cfg.auth_failures_ratio
    {
        out.push(Reason::AuthFailures);
    }
    if input.auth_failures >= cfg.brute_force_min.max(1)
        && share(input.auth_failures, requests) >= 0.5
    {
        out.push(Reason::BruteForce);
    }
    if input.max_route_ids >= cfg.enumeration_min_ids.max(1) {
        out.push(Reason::Enumeration);
    }
    if requests >= cfg.not_found_min_requests.max(1)
        && share(input.not_found, requests) >= cfg.not_found_ratio
    {
        out.push(Reason::NotFoundRatio);
    }

    // Credential handling.
    for r in &input.events {
        if !out.contains(r) {
            out.push(*r);
        }
    }
    if input.frozen_use {
        out.push(Reason::FrozenCredential);
    }
    out
}

/// Score, state and reasons of `input`. Signals with weight 0 are not reported.
pub fn evaluate(input: &ScoreInput, cfg: &ScoreConfig) -> Assessment {
    let mut reasons = signals(input, cfg);
    reasons.retain(|r| cfg.weights.of(*r) > 0);
    reasons.sort();
    let penalty: u32 = reasons.iter().map(|r| u32::from(cfg.weights.of(*r))).sum();
    let score = 100u32.saturating_sub(penalty) as u8;
    Assessment {
        score,
        state: cfg.state_of(score),
        reasons,
    }
}

#[cfg(test)]
mod tests;
