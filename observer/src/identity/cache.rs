//! What extraction made of recently seen credentials, so that a credential sent again
//! (the usual case: a client sends its token with every request) costs one keyed hash
//! and one lookup instead of an HMAC, and for a JWT a base64 and JSON decode.
//!
//! Kept in memory only, bounded ([`MAX_CACHED`] entries; a full cache starts over), never
//! exported, printed or logged. An entry is found by a 128-bit keyed hash of the
//! credential (two SipHash keys drawn from the operating system per cache), never by the
//! credential: the raw text is not kept. An entry holds what an [`Identity`] holds
//! (fingerprint, kind, format with the decoded JWT claims, tier) and nothing that
//! depends on the time: a JWT's expiry is judged by whoever reads its claims, at the
//! time of each request. Entries are made under one fingerprint key and dropped when the
//! key changes.

use std::{
    fmt,
    hash::{BuildHasher, Hasher, RandomState},
    sync::Arc,
};

use super::{CredentialKind, CredentialSource, Fingerprint, FingerprintKey, Identity, TokenFormat};

/// Most credentials cached.
pub const MAX_CACHED: usize = 4096;

/// What a credential was found to be; the same for every request that sends it.
#[derive(Clone)]
struct Cached {
    fingerprint: Fingerprint,
    kind: CredentialKind,
    format: TokenFormat,
    tier: Option<Arc<str>>,
}

/// How a credential was read: the same text read another way is another entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadAs {
    /// A bearer token (JWT or opaque).
    Bearer = 1,
    /// An API key (a JWT if it decodes as one).
    ApiKey = 2,
    /// The base64 text of `Authorization: Basic`.
    Basic = 3,
    /// A session cookie's value.
    Cookie = 4,
}

/// Bounded cache of extracted credentials (see the module documentation).
pub struct CredentialCache {
    hashers: (RandomState, RandomState),
    entries: std::collections::HashMap<u128, Cached, foldhash::fast::RandomState>,
    /// [`FingerprintKey::stamp`] of the key the entries were made with.
    stamp: u64,
    /// Lookups answered from the cache, and not.
    hits: u64,
    misses: u64,
}

impl fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialCache")
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Default for CredentialCache {
    fn default() -> Self {
        Self::new()
    }
}

impl CredentialCache {
    pub fn new() -> Self {
        Self {
            hashers: (RandomState::new(), RandomState::new()),
            entries: std::collections::HashMap::with_hasher(Default::default()),
            stamp: 0,
            hits: 0,
            misses: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lookups answered from the cache so far, and lookups that were not.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// Forget every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Drop the entries if they were made with another key than `key`.
    pub(crate) fn use_key(&mut self, key: &FingerprintKey) {
        if self.stamp != key.stamp() {
            self.entries.clear();
            self.stamp = key.stamp();
        }
    }

    /// The keyed hash an entry is found by.
    fn hash(&self, read_as: ReadAs, raw: &[u8]) -> u128 {
        let one = |state: &RandomState| {
            let mut h = state.build_hasher();
            h.write_u8(read_as as u8);
            h.write(raw);
            h.finish()
        };
        (u128::from(one(&self.hashers.0)) << 64) | u128::from(one(&self.hashers.1))
    }

    /// The identity of `raw` read as `read_as`, found under `source` / `location`: from
    /// the cache, else made by `make` (which must give the identity without a durable
    /// hash) and remembered.
    pub(crate) fn identity(
        &mut self,
        read_as: ReadAs,
        raw: &[u8],
        source: CredentialSource,
        location: &Arc<str>,
        make: impl FnOnce() -> Identity,
    ) -> Identity {
        let h = self.hash(read_as, raw);
        if let Some(c) = self.entries.get(&h) {
            self.hits += 1;
            return Identity {
                fingerprint: c.fingerprint.clone(),
                kind: c.kind,
                source,
                location: Arc::clone(location),
                format: c.format.clone(),
                tier: c.tier.clone(),
                durable: None,
            };
        }
        self.misses += 1;
        let id = make();
        debug_assert!(id.durable.is_none(), "durable hashes are never cached");
        if self.entries.len() >= MAX_CACHED {
            self.entries.clear();
        }
        self.entries.insert(
            h,
            Cached {
                fingerprint: id.fingerprint.clone(),
                kind: id.kind,
                format: id.format.clone(),
                tier: id.tier.clone(),
            },
        );
        id
    }
}

#[cfg(test)]
mod tests {
    use base64::{engine::general_purpose::STANDARD, Engine as _};

    use super::*;
    use crate::{
        identity::{jwt::make_token, Extractor, IdentityConfig, TierConfig, TierRules},
        session::testutil::ExchangeBuilder,
    };

    fn key() -> FingerprintKey {
        FingerprintKey::from_bytes([5; 32])
    }

    /// Exchanges carrying every kind of credential the extractor reads.
    fn exchanges() -> Vec<ExchangeBuilder> {
        let jwt = make_token(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"sub":"carol","jti":"J-9","exp":1700000060,"iss":"me","aud":["a"],"scope":"read pro","plan":"pro"}"#,
        );
        let b = ExchangeBuilder::new;
        vec![
            b().bearer("OPAQUE-SECRET-1"),
            b().bearer(&jwt),
            b().bearer("e*J.e*J.sig"),
            b().header(
                "authorization",
                &format!("Basic {}", STANDARD.encode("dave:PW-1")),
            ),
            b().header("authorization", "Basic !!!notb64"),
            b().header("x-api-key", "pk_pro_KEY-1"),
            b().header("x-api-key", &jwt),
            b().query("api_key=QKEY-2&access_token=a%2Bb&token=x.y.z"),
            b().header("cookie", "theme=dark; session=CK-3"),
            b().header("cookie", "session=S1")
                .header("x-api-key", "K1")
                .header("authorization", "Bearer T1")
                .query("api_key=K1"),
        ]
    }

    fn extractor() -> Extractor {
        let tiers: TierConfig = toml::from_str(
            r#"
            default = "free"
            api_key_prefixes = [{ prefix = "pk_pro_", tier = "pro" }]
            [levels.free]
            [levels.pro]
            "#,
        )
        .unwrap();
        Extractor::new(&IdentityConfig::default()).with_tiers(TierRules::new(&tiers))
    }

    #[test]
    fn cached_identities_are_the_uncached_ones() {
        let (x, key) = (extractor(), key());
        let mut cache = CredentialCache::new();
        let mut out = Vec::new();
        let mut first = (0, 0);
        for round in 0..3 {
            for b in exchanges() {
                let ex = b.build();
                let plain = x.extract(&ex, &key);
                assert!(!plain.is_empty());
                x.extract_cached(&ex, &key, &mut cache, &mut out);
                // Fingerprints, kinds, sources, locations, tiers and JWT claims alike.
                assert_eq!(out, plain, "round {round}");
            }
            if round == 0 {
                first = cache.stats();
            }
        }
        // Every credential was made once; later rounds only looked them up.
        let (hits, misses) = cache.stats();
        assert!(first.1 > 0);
        assert_eq!(misses, first.1);
        assert_eq!(hits - first.0, 2 * (first.0 + first.1));
        // The same text read another way is another entry (a JWT is a bearer token
        // wherever it is; a dotted API key is opaque, a dotted bearer token malformed).
        let ex = ExchangeBuilder::new()
            .header("x-api-key", "e*J.e*J.sig")
            .build();
        x.extract_cached(&ex, &key, &mut cache, &mut out);
        assert_eq!(out, x.extract(&ex, &key));
        assert_eq!(out[0].format, TokenFormat::Opaque);
    }

    #[test]
    fn bounded() {
        let (x, key) = (Extractor::default(), key());
        let mut cache = CredentialCache::new();
        let mut out = Vec::new();
        for i in 0..MAX_CACHED + 100 {
            let ex = ExchangeBuilder::new().bearer(&format!("T-{i}")).build();
            x.extract_cached(&ex, &key, &mut cache, &mut out);
            assert!(cache.len() <= MAX_CACHED);
        }
        assert!(!cache.is_empty());
        // Still right after starting over.
        let ex = ExchangeBuilder::new().bearer("T-1").build();
        x.extract_cached(&ex, &key, &mut cache, &mut out);
        assert_eq!(out, x.extract(&ex, &key));
    }

    #[test]
    fn another_key_drops_the_entries() {
        let x = Extractor::default();
        let mut cache = CredentialCache::new();
        let mut out = Vec::new();
        let jwt = make_token(r#"{"alg":"HS256"}"#, r#"{"sub":"erin"}"#);
        let ex = ExchangeBuilder::new().bearer(&jwt).build();
        let mut k = FingerprintKey::from_bytes([1; 32]);
        x.extract_cached(&ex, &k, &mut cache, &mut out);
        let before = out.clone();
        // Another key with the same generation, and a rotated key.
        let other = FingerprintKey::from_bytes([2; 32]);
        x.extract_cached(&ex, &other, &mut cache, &mut out);
        assert_eq!(out, x.extract(&ex, &other));
        assert_ne!(out[0].fingerprint, before[0].fingerprint);
        assert_ne!(out[0].jwt().unwrap().sub, before[0].jwt().unwrap().sub);
        k.rotate().unwrap();
        x.extract_cached(&ex, &k, &mut cache, &mut out);
        assert_eq!(out, x.extract(&ex, &k));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn durable_hashes_bypass_the_cache() {
        let (x, key) = (Extractor::default(), key());
        let freeze = crate::identity::FreezeKey::from_bytes([8; 32]);
        let mut cache = CredentialCache::new();
        let mut out = Vec::new();
        let ex = ExchangeBuilder::new().bearer("DURABLE-1").build();
        x.extract_cached(&ex, &key, &mut cache, &mut out);
        assert!(out[0].durable.is_none());
        let d = x.extract_durable(&ex, &key, &freeze);
        assert!(d[0].durable.is_some());
        assert_eq!(d[0].fingerprint, out[0].fingerprint);
    }

    #[test]
    fn holds_nothing_raw() {
        let (x, key) = (Extractor::default(), key());
        let mut cache = CredentialCache::new();
        let mut out = Vec::new();
        let secret = "RAW-CREDENTIAL-TEXT-42";
        let jwt = make_token(r#"{"alg":"HS256"}"#, r#"{"sub":"SUBJECT-TEXT-42"}"#);
        for ex in [
            ExchangeBuilder::new().bearer(secret).build(),
            ExchangeBuilder::new().bearer(&jwt).build(),
        ] {
            x.extract_cached(&ex, &key, &mut cache, &mut out);
        }
        // Every entry, as the cache holds it.
        let held: String = cache
            .entries
            .iter()
            .map(|(h, c)| {
                format!(
                    "{h:x} {} {:?} {:?} {:?}",
                    c.fingerprint, c.kind, c.format, c.tier
                )
            })
            .collect();
        for s in [
            secret,
            "SUBJECT-TEXT-42",
            jwt.as_str(),
            jwt.split('.').nth(1).unwrap(),
        ] {
            assert!(!held.contains(s), "{s} in {held}");
            assert!(!format!("{cache:?}").contains(s));
        }
    }
}
