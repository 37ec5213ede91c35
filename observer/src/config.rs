//! The agent's configuration: one [`Config`], read from an optional TOML file, overridden
//! by command-line flags, validated once at start with errors that name the bad key.

use std::{net::SocketAddr, path::Path};

use serde::{Deserialize, Serialize};

use observer_common::{DEFAULT_CAPTURE, MAX_CAPTURE};

use crate::{identity::IdentityConfig, score::ScoreConfig, session::SessionConfig};

/// Every setting, with its default.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the agent's HTTP endpoint (`/metrics`, `/healthz`, JSON API).
    pub listen: SocketAddr,
    pub capture: CaptureConfig,
    pub output: OutputConfig,
    pub identity: IdentityConfig,
    pub sessions: SessionConfig,
    pub scoring: ScoreConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".parse().expect("valid literal"),
            capture: CaptureConfig::default(),
            output: OutputConfig::default(),
            identity: IdentityConfig::default(),
            sessions: SessionConfig::default(),
            scoring: ScoreConfig::default(),
        }
    }
}

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
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            capture_bytes: DEFAULT_CAPTURE,
            ring_buffer_bytes: 16 * 1024 * 1024,
            max_connections: 65536,
            extra_headers: Vec::new(),
        }
    }
}

/// `[output]`: streams written besides the HTTP endpoint.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Write every exchange as a JSON line to this file (`-` for stdout). Off by default.
    pub exchanges_jsonl: Option<String>,
    /// Write a JSON line to this file (`-` for stdout) each time a session changes state.
    pub alerts_jsonl: Option<String>,
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
    Invalid { key: &'static str, why: String },
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
                key: "capture.capture_bytes",
                why: format!("{} is outside 1..={MAX_CAPTURE}", c.capture_bytes),
            });
        }
        if !c.ring_buffer_bytes.is_power_of_two() || c.ring_buffer_bytes < 4096 {
            return Err(ConfigError::Invalid {
                key: "capture.ring_buffer_bytes",
                why: format!("{} is not a power of two >= 4096", c.ring_buffer_bytes),
            });
        }
        if c.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "capture.max_connections",
                why: "must be at least 1".into(),
            });
        }
        if let Some(bad) = c
            .extra_headers
            .iter()
            .find(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
        {
            return Err(ConfigError::Invalid {
                key: "capture.extra_headers",
                why: format!("{bad:?} is not a header name"),
            });
        }
        self.sessions
            .validate()
            .map_err(|(key, why)| ConfigError::Invalid { key, why })?;
        self.scoring
            .validate()
            .map_err(|(key, why)| ConfigError::Invalid { key, why })?;
        Ok(())
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
    }
}
