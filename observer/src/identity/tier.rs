//! Access tiers (`[tiers]`): which tier a credential belongs to, and each tier's rate
//! and daily quota, so that every consumer's use can be shown against what it is allowed.
//!
//! A credential's tier comes from (first match wins) its JWT's `plan` or `tier` claim, a
//! `scope` entry naming a tier (`pro` or `tier:pro`), an API-key prefix rule, or the
//! default. Only the tier's name is kept, never the key or claim it came from.

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};

use super::JwtClaims;

/// Limits of one tier; 0 means unlimited.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TierLimits {
    /// Sustained requests per second allowed.
    pub rate_per_sec: f64,
    /// Requests allowed per UTC day.
    pub requests_per_day: u64,
}

/// An API-key prefix and the tier of keys that start with it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyPrefixRule {
    pub prefix: String,
    pub tier: String,
}

/// `[tiers]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TierConfig {
    /// Tier of credentials no rule places; empty: they have no tier.
    pub default: String,
    /// API-key prefix rules, tried in order.
    pub api_key_prefixes: Vec<KeyPrefixRule>,
    /// The tiers by name.
    pub levels: BTreeMap<String, TierLimits>,
}

impl TierConfig {
    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (name, l) in &self.levels {
            if name.is_empty() || name.len() > 32 || name.chars().any(char::is_whitespace) {
                return Err((
                    format!("tiers.levels.{name}"),
                    "a tier name is 1..=32 characters without spaces".into(),
                ));
            }
            if !(l.rate_per_sec.is_finite() && l.rate_per_sec >= 0.0) {
                return Err((
                    format!("tiers.levels.{name}.rate_per_sec"),
                    "must be 0 (unlimited) or a positive number".into(),
                ));
            }
        }
        let known = |t: &str, key: String| {
            if self.levels.contains_key(t) {
                Ok(())
            } else {
                Err((key, format!("no tier {t:?} in [tiers.levels]")))
            }
        };
        if !self.default.is_empty() {
            known(&self.default, "tiers.default".into())?;
        }
        for (i, r) in self.api_key_prefixes.iter().enumerate() {
            if r.prefix.is_empty() {
                return Err((
                    format!("tiers.api_key_prefixes[{i}].prefix"),
                    "must not be empty".into(),
                ));
            }
            known(&r.tier, format!("tiers.api_key_prefixes[{i}].tier"))?;
        }
        Ok(())
    }

    pub fn limits(&self, tier: &str) -> Option<&TierLimits> {
        self.levels.get(tier)
    }
}

/// Resolves credentials to tier names; built once from the config.
#[derive(Clone, Debug, Default)]
pub struct TierRules {
    names: Vec<Arc<str>>,
    prefixes: Vec<(Vec<u8>, Arc<str>)>,
    default: Option<Arc<str>>,
}

impl TierRules {
    pub fn new(c: &TierConfig) -> Self {
        let names: Vec<Arc<str>> = c.levels.keys().map(|n| Arc::from(n.as_str())).collect();
        let name = |t: &str| names.iter().find(|n| &***n == t).cloned();
        Self {
            prefixes: c
                .api_key_prefixes
                .iter()
                .filter_map(|r| Some((r.prefix.as_bytes().to_vec(), name(&r.tier)?)))
                .collect(),
            default: name(&c.default),
            names,
        }
    }

    fn named(&self, value: &str) -> Option<Arc<str>> {
        let value = value.strip_prefix("tier:").unwrap_or(value);
        self.names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(value))
            .cloned()
    }

    /// The tier of a credential: `raw` is its value (API keys), `jwt` its claims.
    pub fn tier_of(&self, raw: &[u8], api_key: bool, jwt: Option<&JwtClaims>) -> Option<Arc<str>> {
        if self.names.is_empty() {
            return None;
        }
        if let Some(c) = jwt {
            let from_claim = c.plan.as_deref().and_then(|p| self.named(p));
            if let Some(t) = from_claim.or_else(|| c.scope.iter().find_map(|s| self.named(s))) {
                return Some(t);
            }
        }
        if api_key {
            if let Some((_, t)) = self.prefixes.iter().find(|(p, _)| raw.starts_with(p)) {
                return Some(Arc::clone(t));
            }
        }
        self.default.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TierConfig {
        toml::from_str(
            r#"
            default = "free"
            api_key_prefixes = [{ prefix = "pk_pro_", tier = "pro" }]
            [levels.free]
            rate_per_sec = 2.0
            requests_per_day = 1000
            [levels.pro]
            rate_per_sec = 50.0
            "#,
        )
        .unwrap()
    }

    #[test]
    fn resolves_claims_scopes_prefixes_and_default() {
        let c = config();
        c.validate().unwrap();
        let r = TierRules::new(&c);
        let jwt = |plan: Option<&str>, scope: &[&str]| JwtClaims {
            plan: plan.map(String::from),
            scope: scope.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let t = |raw: &[u8], key: bool, j: Option<&JwtClaims>| {
            r.tier_of(raw, key, j).map(|t| t.to_string())
        };
        assert_eq!(
            t(b"x", false, Some(&jwt(Some("PRO"), &[]))).as_deref(),
            Some("pro")
        );
        assert_eq!(
            t(b"x", false, Some(&jwt(None, &["read", "tier:pro"]))).as_deref(),
            Some("pro")
        );
        assert_eq!(
            t(b"x", false, Some(&jwt(Some("gold"), &[]))).as_deref(),
            Some("free")
        );
        assert_eq!(t(b"pk_pro_abc", true, None).as_deref(), Some("pro"));
        assert_eq!(t(b"pk_pro_abc", false, None).as_deref(), Some("free"));
        assert_eq!(t(b"sk_abc", true, None).as_deref(), Some("free"));
        // No tiers configured: nothing is tracked.
        assert_eq!(
            TierRules::new(&TierConfig::default()).tier_of(b"x", true, None),
            None
        );
    }

    #[test]
    fn bad_config_names_the_key() {
        let mut c = config();
        c.default = "gold".into();
        assert_eq!(c.validate().unwrap_err().0, "tiers.default");
        let mut c = config();
        c.api_key_prefixes[0].tier = "nope".into();
        assert_eq!(
            c.validate().unwrap_err().0,
            "tiers.api_key_prefixes[0].tier"
        );
        let mut c = config();
        c.levels.get_mut("pro").unwrap().rate_per_sec = -1.0;
        assert_eq!(c.validate().unwrap_err().0, "tiers.levels.pro.rate_per_sec");
        assert!(toml::from_str::<TierConfig>("[levels.x]\nrate = 1").is_err());
    }
}
