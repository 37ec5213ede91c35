//! The agent's configuration: one [`Config`], read from an optional TOML file, overridden
//! by command-line flags, validated once at start with errors that name the bad key.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use observer_common::{DEFAULT_CAPTURE, MAX_CAPTURE};

use crate::{
    capture::tls::TlsConfig,
    identity::{IdentityConfig, TierConfig},
    score::ScoreConfig,
    session::SessionConfig,
    workload::KubernetesConfig,
};

pub use crate::export::control::DEFAULT_CONTROL_SOCKET;

/// Every setting, with its default.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the agent's HTTP endpoint (`/metrics`, `/healthz`, JSON API).
    pub listen: SocketAddr,
    pub capture: CaptureConfig,
    pub output: OutputConfig,
    /// `[metrics]`: names and route labels of the HTTP metrics.
    pub metrics: crate::export::metrics::MetricsConfig,
    pub identity: IdentityConfig,
    pub sessions: SessionConfig,
    pub scoring: ScoreConfig,
    pub privacy: PrivacyConfig,
    pub kubernetes: KubernetesConfig,
    pub tls: TlsConfig,
    pub tiers: TierConfig,
    /// Directory for durable state (frozen credentials), created with mode 0700; absent:
    /// nothing is written and freezes last as long as the process.
    pub state_dir: Option<PathBuf>,
    /// Older spelling of `control.socket` (kept working; do not set both).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
    /// `[control]`: where the JSON API is served (socket, optional TCP listener) and who
    /// may use it.
    pub control: crate::export::control::ControlConfig,
    /// `[otlp]`: metrics and sampled spans sent to an OpenTelemetry Collector.
    pub otlp: crate::export::otlp::OtlpConfig,
    /// `[fleet]`: sessions across every node on a Redis-protocol store (off by default).
    pub fleet: crate::fleet::FleetConfig,
    /// `[layers]`: web server access logs reconciled with the exchanges seen.
    pub layers: crate::layers::LayersConfig,
    /// `[downstream]`: DNS and database calls attributed to the requests they serve.
    pub downstream: crate::downstream::DownstreamConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".parse().expect("valid literal"),
            capture: CaptureConfig::default(),
            output: OutputConfig::default(),
            metrics: Default::default(),
            identity: IdentityConfig::default(),
            sessions: SessionConfig::default(),
            scoring: ScoreConfig::default(),
            privacy: PrivacyConfig::default(),
            kubernetes: KubernetesConfig::default(),
            tls: TlsConfig::default(),
            tiers: TierConfig::default(),
            state_dir: None,
            control_socket: None,
            control: Default::default(),
            otlp: Default::default(),
            fleet: Default::default(),
            layers: Default::default(),
            downstream: Default::default(),
        }
    }
}

/// Most connections `capture.max_connections` may ask for: the kernel's socket table is
/// sized from it (about 100 bytes of kernel memory per entry).
pub const MAX_CONNECTIONS: usize = 4 * 1024 * 1024;

/// `[capture]`: what the kernel side copies and how much the agent holds.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Bytes copied from each read/write (1..=8192).
    pub capture_bytes: u32,
    /// Size of the kernel→agent ring buffer in bytes (a power of two, at least 4096).
    pub ring_buffer_bytes: u32,
    /// Most connections followed at once; the least recently active is dropped beyond it.
    pub max_connections: usize,
    /// Extra request headers to keep besides the built-in allowlist.
    pub extra_headers: Vec<String>,
    /// Seconds between sweeps of the kernel's socket table for sockets closed unseen.
    pub sweep_interval_secs: u64,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            capture_bytes: DEFAULT_CAPTURE,
            ring_buffer_bytes: 8 * 1024 * 1024,
            max_connections: 65536,
            extra_headers: Vec::new(),
            sweep_interval_secs: 60,
        }
    }
}

/// `[output]`: streams written besides the HTTP endpoint.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Write every exchange as a JSON line to this file (`-` for stdout). Off by default.
    pub exchanges_jsonl: Option<String>,
    /// Print each exchange's raw path besides its route template. Off by default: a
    /// path may name a person (`/users/jsmith`).
    pub exchange_raw_paths: bool,
    /// Write a JSON line to this file (`-` for stdout) each time a session changes state.
    pub alerts_jsonl: Option<String>,
    /// Audit stream: one JSON line per API call on the control channel. Default:
    /// `<state_dir>/audit.jsonl` when `state_dir` is set, else the log.
    pub audit_jsonl: Option<String>,
}

/// `[privacy]`: traffic that is never observed (a per-tenant off switch). Matching
/// exchanges are dropped before anything is counted, stored or printed.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Process names (`comm`, as in `/proc/<pid>/comm`) whose connections are ignored
    /// before any parsing.
    pub ignore_processes: Vec<String>,
    /// `Host` header values (any case, with or without port) that are ignored.
    pub ignore_hosts: Vec<String>,
    /// Path prefixes (`/internal/`, `/health`) that are ignored. Paths are compared as
    /// the server resolves them ([`normalise_path`]): `/%69nternal/`, `//internal/` and
    /// `/public/../internal/` are all `/internal/`.
    pub ignore_routes: Vec<String>,
    /// Compare `ignore_routes` without regard to case (for servers that do the same).
    pub ignore_routes_case_insensitive: bool,
}

impl PrivacyConfig {
    /// The off switch as the pipeline applies it (route prefixes resolved once).
    pub fn filter(&self) -> PrivacyFilter {
        PrivacyFilter {
            processes: self.ignore_processes.clone(),
            hosts: self.ignore_hosts.clone(),
            routes: self
                .ignore_routes
                .iter()
                .map(|r| normalise_path(r).into_owned())
                .collect(),
            case_insensitive: self.ignore_routes_case_insensitive,
        }
    }
}

/// [`PrivacyConfig`] ready for every exchange: the route prefixes already normalised.
#[derive(Clone, Debug, Default)]
pub struct PrivacyFilter {
    processes: Vec<String>,
    hosts: Vec<String>,
    routes: Vec<String>,
    case_insensitive: bool,
}

impl PrivacyFilter {
    /// Whether an exchange falls under the off switch (process, host or route).
    pub fn ignores(&self, ex: &crate::exchange::Exchange) -> bool {
        if self.processes.iter().any(|p| **p == *ex.comm) {
            return true;
        }
        if let Some(host) = ex.header("host") {
            let name = host.rsplit_once(':').map_or(host, |(h, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    host
                }
            });
            if self
                .hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name) || h.eq_ignore_ascii_case(host))
            {
                return true;
            }
        }
        if self.routes.is_empty() {
            return false;
        }
        let path = normalise_path(&ex.path);
        self.routes.iter().any(|prefix| {
            if self.case_insensitive {
                path.len() >= prefix.len()
                    && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            } else {
                path.starts_with(prefix.as_str())
            }
        })
    }
}

/// A path as a server resolves it, for the off switch: percent-decoded (again while
/// anything is left to decode, so double encoding hides nothing), `\` read as `/`,
/// `;parameters` dropped from segments, empty and `.` segments removed, `..` resolved.
/// A trailing slash is kept.
pub fn normalise_path(path: &str) -> std::borrow::Cow<'_, str> {
    let plain = !path.contains(['%', '\\', ';']) && !path.contains("//") && !path.contains("/.");
    if plain {
        return path.into();
    }
    let mut bytes = path.as_bytes().to_vec();
    for _ in 0..4 {
        if !bytes.contains(&b'%') {
            break;
        }
        let decoded = percent_decode(&bytes);
        if decoded == bytes {
            break;
        }
        bytes = decoded;
    }
    let text = String::from_utf8_lossy(&bytes).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = text.split('/').collect();
    let mut trailing = false;
    for (i, part) in parts.iter().enumerate() {
        let seg = part.split(';').next().unwrap_or_default();
        let last = i + 1 == parts.len();
        match seg {
            "" | "." => trailing = last && i > 0,
            ".." => {
                segments.pop();
                trailing = last;
            }
            s => {
                segments.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(text.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    out.into()
}

fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid value for `{key}`: {why}")]
    Invalid { key: String, why: String },
}

impl Config {
    /// Read a TOML file (unknown keys are errors).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "<inline>".into(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Check every value once, at start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.capture;
        if c.capture_bytes == 0 || c.capture_bytes as usize > MAX_CAPTURE {
            return Err(ConfigError::Invalid {
                key: "capture.capture_bytes".into(),
                why: format!("{} is outside 1..={MAX_CAPTURE}", c.capture_bytes),
            });
        }
        if !c.ring_buffer_bytes.is_power_of_two() || c.ring_buffer_bytes < 4096 {
            return Err(ConfigError::Invalid {
                key: "capture.ring_buffer_bytes".into(),
                why: format!("{} is not a power of two >= 4096", c.ring_buffer_bytes),
            });
        }
        if c.sweep_interval_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "capture.sweep_interval_secs".into(),
                why: "must be at least 1".into(),
            });
        }
        if !(1..=MAX_CONNECTIONS).contains(&c.max_connections) {
            return Err(ConfigError::Invalid {
                key: "capture.max_connections".into(),
                why: format!("{} is outside 1..={MAX_CONNECTIONS}", c.max_connections),
            });
        }
        if let Some(bad) = c
            .extra_headers
            .iter()
            .find(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
        {
            return Err(ConfigError::Invalid {
                key: "capture.extra_headers".into(),
                why: format!("{bad:?} is not a header name"),
            });
        }
        if let Some(bad) = self
            .privacy
            .ignore_routes
            .iter()
            .find(|r| !r.starts_with('/'))
        {
            return Err(ConfigError::Invalid {
                key: "privacy.ignore_routes".into(),
                why: format!("{bad:?} does not start with /"),
            });
        }
        self.metrics
            .validate()
            .map_err(|(key, why)| ConfigError::Invalid { key, why })?;
        self.kubernetes
            .validate()
            .map_err(|(key, why)| ConfigError::Invalid {
                key: key.into(),
                why,
            })?;
        self.sessions
            .validate()
            .map_err(|(key, why)| ConfigError::Invalid {
                key: key.into(),
                why,
            })?;
        self.scoring
            .validate()
            .map_err(|(key, why)| ConfigError::Invalid {
                key: key.into(),
                why,
            })?;
        self.tiers
            .validate()
            .map_err(|(key, why)| ConfigError::Invalid { key, why })?;
        let id = &self.identity;
        if id.shared_secret_file.is_some() && (id.key.is_some() || id.key_file.is_some()) {
            return Err(ConfigError::Invalid {
                key: "identity.shared_secret_file".into(),
                why: "fleet keys are derived from the shared secret; remove identity.key and \
                      identity.key_file"
                    .into(),
            });
        }
        if self
            .control_socket
            .as_ref()
            .is_some_and(|p| *p != self.control.socket)
            && self.control.socket != Path::new(DEFAULT_CONTROL_SOCKET)
        {
            return Err(ConfigError::Invalid {
                key: "control_socket".into(),
                why: "set either control_socket or control.socket, not both".into(),
            });
        }
        self.control
            .validate()
            .map_err(|(key, why)| ConfigError::Invalid { key, why })?;
        self.otlp
            .validate()
            .map_err(|(key, why)| ConfigError::Invalid { key, why })?;
        self.fleet
            .validate()
            .map_err(|(key, why)| ConfigError::Invalid { key, why })?;
        self.layers
            .validate()
            .map_err(|(key, why)| ConfigError::Invalid { key, why })?;
        self.downstream
            .validate()
            .map_err(|(key, why)| ConfigError::Invalid { key, why })?;
        Ok(())
    }

    /// The control socket's path (`control.socket`, or the older `control_socket`);
    /// empty: none.
    pub fn control_socket_path(&self) -> &Path {
        self.control_socket
            .as_deref()
            .unwrap_or(&self.control.socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_matches_defaults() {
        let text = include_str!("../../deploy/observer.toml");
        let parsed = Config::from_toml(text).expect("example config parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn off_switch_matches_process_host_and_route() {
        use crate::{exchange::*, http::*};
        let ex = |comm: &str, host: &str, path: &str| Exchange {
            protocol: Protocol::Http1,
            role: Role::Server,
            tls: false,
            client: UNKNOWN_ADDR,
            server: UNKNOWN_ADDR,
            pid: 1,
            comm: comm.into(),
            method: "GET".into(),
            path: path.into(),
            query: None,
            route: crate::route::RouteTemplate::of("GET", path),
            status: 200,
            request_headers: vec![Header {
                name: "host".into(),
                value: host.into(),
            }],
            started_at: std::time::SystemTime::UNIX_EPOCH,
            latency: std::time::Duration::ZERO,
            request_body_bytes: 0,
            response_body_bytes: None,
            grpc: None,
            workload: Default::default(),
            lost_before: 0,
            downstream: None,
        };
        let mut p = PrivacyConfig {
            ignore_processes: vec!["payroll".into()],
            ignore_hosts: vec!["hr.example.com".into()],
            ignore_routes: vec!["/internal/".into()],
            ignore_routes_case_insensitive: false,
        };
        assert!(p.filter().ignores(&ex("payroll", "a", "/x")));
        assert!(p
            .filter()
            .ignores(&ex("nginx", "HR.example.com:8443", "/x")));
        assert!(p.filter().ignores(&ex("nginx", "hr.example.com", "/x")));
        assert!(p.filter().ignores(&ex("nginx", "a", "/internal/metrics")));
        assert!(!p
            .filter()
            .ignores(&ex("nginx", "api.example.com", "/internal")));
        assert!(!PrivacyConfig::default()
            .filter()
            .ignores(&ex("nginx", "a", "/")));
        // The off switch cannot be walked around by spelling the path differently.
        for path in [
            "/%69nternal/x",
            "/%2569nternal/x",
            "//internal/x",
            "/internal//x",
            "/./internal/x",
            "/public/../internal/x",
            "/a/b/../../internal/",
            "/internal;jsessionid=1/x",
            "\\internal\\x",
            "/internal%2Fx",
        ] {
            assert!(p.filter().ignores(&ex("nginx", "a", path)), "{path}");
        }
        assert!(!p.filter().ignores(&ex("nginx", "a", "/INTERNAL/x")));
        assert!(!p
            .filter()
            .ignores(&ex("nginx", "a", "/internal/../public/x")));
        p.ignore_routes_case_insensitive = true;
        assert!(p.filter().ignores(&ex("nginx", "a", "/INTERNAL/x")));
        assert!(p.filter().ignores(&ex("nginx", "a", "/%49nternal/x")));
        assert_eq!(normalise_path("/a/./b/../c/"), "/a/c/");
        assert_eq!(normalise_path("/.."), "/");
        assert_eq!(normalise_path("/a%zz"), "/a%zz");
        assert_eq!(normalise_path("/plain/path"), "/plain/path");
        let err = Config::from_toml("[privacy]\nignore_routes = [\"internal\"]\n").unwrap_err();
        assert!(err.to_string().contains("privacy.ignore_routes"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[capture]\ncapture_byte = 10\n").unwrap_err();
        assert!(err.to_string().contains("capture_byte"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Config::from_toml("[capture]\ncapture_bytes = 100000\n").unwrap_err();
        assert!(err.to_string().contains("capture.capture_bytes"), "{err}");
        let err = Config::from_toml("[capture]\nring_buffer_bytes = 5000\n").unwrap_err();
        assert!(
            err.to_string().contains("capture.ring_buffer_bytes"),
            "{err}"
        );
        let err = Config::from_toml("listen = \"nope\"\n").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err = Config::from_toml("[identity]\nshared_secret_file = \"/s\"\nkey_file = \"/k\"\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("identity.shared_secret_file"),
            "{err}"
        );
        let err = Config::from_toml("[fleet]\nendpoint = \"localhost:6379\"\n").unwrap_err();
        assert!(err.to_string().contains("fleet.endpoint"), "{err}");
        let err = Config::from_toml("[fleet]\nendpoit = \"redis://a\"\n").unwrap_err();
        assert!(err.to_string().contains("endpoit"), "{err}");
    }
}
