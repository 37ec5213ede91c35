//! Scoring: each session's signals, health score (100 healthy .. 0), state and reasons.
//!
//! [`evaluate`] looks at one session at one instant; the session table calls it for every
//! session that can have changed on each pass ([`crate::session::SessionTable::score`]) and
//! reports state changes as [`StateChange`] values.
//!
//! The score is 100 minus the weights of the active signals (at least 0). A session is
//! healthy at `healthy_min` or above, suspicious at `suspicious_min` or above, unhealthy
//! below. Every signal's default weight is enough to leave the healthy state on its own.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize, Serializer};

use crate::session::{
    state::{since, unix_secs, within, Session},
    Direction,
};

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
    MultiAgent / multi_agent => "multi_agent", 25,
        "The credential was used by several user-agent families within the window.";
    NetworkAgentSwitch / network_agent_switch => "network_agent_switch", 35,
        "Network and user agent changed together to values new to the session.";
    RateSpike / rate_spike => "rate_spike", 25,
        "Request rate far above the session's (or a route's) own baseline.";
    RateLimit / rate_limit => "rate_limit", 30,
        "Request rate above the absolute limit.";
    AuthFailures / auth_failures => "auth_failures", 30,
        "A burst of 401/403 responses.";
    Enumeration / enumeration => "enumeration", 40,
        "Many distinct object ids requested on one route.";
    NotFoundRatio / not_found_ratio => "not_found_ratio", 25,
        "A high share of 404 responses.";
    ExpiredJwtAccepted / expired_jwt_accepted => "expired_jwt_accepted", 50,
        "An expired JWT was answered with 2xx.";
    JwtNotYetValid / jwt_not_yet_valid => "jwt_not_yet_valid", 50,
        "A JWT used before its `nbf` was answered with 2xx.";
    JwtAlgNone / jwt_alg_none => "jwt_alg_none", 60,
        "An unsigned JWT (`alg: none`).";
    CredentialInQuery / credential_in_query => "credential_in_query", 25,
        "A credential was sent in the query string.";
    PlaintextCredential / plaintext_credential => "plaintext_credential", 25,
        "A credential was sent without TLS to or from a non-loopback peer.";
    FrozenCredential / frozen_credential => "frozen_credential", 100,
        "A frozen credential was used.";
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
    /// `rate_limit` when the current rate exceeds this many requests per second.
    pub rate_limit: f64,
    /// 401/403 responses within the window that make `auth_failures`...
    pub auth_failures_min: u64,
    /// ...when they are at least this share of the window's requests.
    pub auth_failures_ratio: f64,
    /// Distinct ids on one route within the window that make `enumeration`.
    pub enumeration_min_ids: u64,
    /// Requests within the window before `not_found_ratio` is considered...
    pub not_found_min_requests: u64,
    /// ...and the share of 404s that makes it.
    pub not_found_ratio: f64,
    /// Clock skew allowed around JWT `exp` / `nbf`, seconds.
    pub jwt_leeway_secs: u64,
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
            multi_agent_min: 3,
            switch_min_requests: 10,
            rate_short_secs: 10.0,
            rate_baseline_secs: 600.0,
            warmup_secs: 300,
            warmup_requests: 50,
            rate_spike_factor: 10.0,
            rate_spike_min: 2.0,
            rate_limit: 50.0,
            auth_failures_min: 10,
            auth_failures_ratio: 0.2,
            enumeration_min_ids: 100,
            not_found_min_requests: 20,
            not_found_ratio: 0.5,
            jwt_leeway_secs: 60,
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
        for (key, v) in [
            ("scoring.rate_short_secs", self.rate_short_secs),
            ("scoring.rate_baseline_secs", self.rate_baseline_secs),
            ("scoring.rate_spike_factor", self.rate_spike_factor),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(key, "must be a positive number");
            }
        }
        for (key, v) in [
            ("scoring.auth_failures_ratio", self.auth_failures_ratio),
            ("scoring.not_found_ratio", self.not_found_ratio),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(key, "must be between 0 and 1");
            }
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

fn ser_unix<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(unix_secs(*t))
}

/// A session changed state in a scoring pass (one JSON-lines alert).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StateChange {
    pub session_id: String,
    pub direction: Direction,
    pub from: HealthState,
    pub to: HealthState,
    pub score: u8,
    pub reasons: Vec<Reason>,
    /// Unix time of the pass, seconds.
    #[serde(serialize_with = "ser_unix")]
    pub at: SystemTime,
}

/// Whether a series (session or route) has enough history for its baseline.
fn warmed(cfg: &ScoreConfig, first_seen: SystemTime, requests: u64, now: SystemTime) -> bool {
    requests >= cfg.warmup_requests && since(now, first_seen).as_secs() >= cfg.warmup_secs
}

/// Current rate far above the baseline.
fn spiking(cfg: &ScoreConfig, current: f64, baseline: f64) -> bool {
    current >= cfg.rate_spike_min && current > cfg.rate_spike_factor * baseline
}

/// The signals active for `s` at `now`.
pub(crate) fn signals(s: &Session, cfg: &ScoreConfig, now: SystemTime) -> Vec<Reason> {
    let window = cfg.window();
    let mut out = Vec::new();
    let inbound = s.direction == Direction::Inbound;

    // Dimensions used at once.
    let networks = s
        .networks
        .live(now, window)
        .filter(|(n, _)| matches!(n, crate::session::Network::Net { .. }))
        .count();
    if inbound && networks >= cfg.multi_network_min.max(2) {
        out.push(Reason::MultiNetwork);
    }
    if s.agents.live(now, window).count() >= cfg.multi_agent_min.max(2) {
        out.push(Reason::MultiAgent);
    }
    let recent = |t: Option<SystemTime>| t.is_some_and(|t| within(t, now, window));
    if inbound && recent(s.marks.network_agent_switch) {
        out.push(Reason::NetworkAgentSwitch);
    }

    // Rates.
    let current = s.rate.current(now, cfg.rate_short_secs);
    let mut spike = false;
    if warmed(cfg, s.first_seen, s.requests, now) {
        let age = since(now, s.first_seen);
        spike = spiking(
            cfg,
            current,
            s.rate.baseline(now, cfg.rate_baseline_secs, age),
        );
    }
    if !spike {
        spike = s.routes.map.values().any(|r| {
            warmed(cfg, r.first_seen, r.requests, now) && {
                let age = since(now, r.first_seen);
                spiking(
                    cfg,
                    r.rate.current(now, cfg.rate_short_secs),
                    r.rate.baseline(now, cfg.rate_baseline_secs, age),
                )
            }
        });
    }
    if spike {
        out.push(Reason::RateSpike);
    }
    if current > cfg.rate_limit {
        out.push(Reason::RateLimit);
    }

    // Outcomes within the window.
    let (mut requests, mut auth, mut not_found) = (0u64, 0u64, 0u64);
    for c in s.window.live(now) {
        requests += u64::from(c.requests);
        auth += u64::from(c.auth_failures);
        not_found += u64::from(c.not_found);
    }
    let share = |n: u64| {
        if requests == 0 {
            0.0
        } else {
            n as f64 / requests as f64
        }
    };
    if auth >= cfg.auth_failures_min.max(1) && share(auth) >= cfg.auth_failures_ratio {
        out.push(Reason::AuthFailures);
    }
    if s.routes
        .map
        .values()
        .any(|r| r.distinct_ids(now) >= cfg.enumeration_min_ids.max(1))
    {
        out.push(Reason::Enumeration);
    }
    if requests >= cfg.not_found_min_requests.max(1) && share(not_found) >= cfg.not_found_ratio {
        out.push(Reason::NotFoundRatio);
    }

    // Credential handling.
    let m = &s.marks;
    for (t, r) in [
        (m.expired_jwt_accepted, Reason::ExpiredJwtAccepted),
        (m.jwt_not_yet_valid, Reason::JwtNotYetValid),
        (m.jwt_alg_none, Reason::JwtAlgNone),
        (m.credential_in_query, Reason::CredentialInQuery),
        (m.plaintext_credential, Reason::PlaintextCredential),
    ] {
        if recent(t) {
            out.push(r);
        }
    }
    if m.frozen_use.is_some() {
        out.push(Reason::FrozenCredential);
    }
    out
}

/// Score, state and reasons of `s` at `now`. Signals with weight 0 are not reported.
pub(crate) fn evaluate(s: &Session, cfg: &ScoreConfig, now: SystemTime) -> Assessment {
    let mut reasons = signals(s, cfg, now);
    reasons.retain(|r| cfg.weights.of(*r) > 0);
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
