//! Identity: credentials found in an exchange, turned into fingerprints at once.
//!
//! [`Extractor::extract`] looks at the allowlisted request headers and the query string of
//! one [`Exchange`] and returns [`Identity`] values that hold only a keyed fingerprint,
//! the kind of credential, where it was found and (for JWTs) a few decoded claims. The raw
//! text is borrowed from the exchange for the length of the call and never copied into
//! anything returned.
//!
//! Looked for, in this order (the first is the request's primary identity):
//! `Authorization: Bearer` (JWT or opaque), `Authorization: Basic` (user part only),
//! API-key headers, credentials in the query string, session cookies.

pub mod cache;
pub mod durable;
pub mod jwt;
pub mod key;
pub mod tier;

use std::{fmt, path::PathBuf, sync::Arc};

use base64::{
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD},
    Engine as _,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::exchange::Exchange;

pub use cache::CredentialCache;
use cache::ReadAs;
pub use durable::{DurableHash, FreezeKey};
pub use jwt::{JwtClaims, JwtError};
pub use key::{Fingerprint, FingerprintKey, KeyError};
pub use tier::{TierConfig, TierLimits, TierRules};

/// Most credentials taken from one exchange.
const MAX_IDENTITIES: usize = 8;

/// `[identity]`: where credentials are looked for and how fingerprints are keyed.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Request headers holding an API key (any case). They must also be captured: the
    /// agent adds them to the header allowlist.
    pub api_key_headers: Vec<String>,
    /// Query parameters holding a credential (any case).
    pub query_params: Vec<String>,
    /// Cookie names holding a session id (any case).
    pub session_cookies: Vec<String>,
    /// File holding the fingerprint key (64 hex digits); created with mode 0600 and a
    /// random key if missing. Without it (and without `key` or `shared_secret_file`) the
    /// key is kept in `state_dir/fingerprint.key` when `state_dir` is set, else random per
    /// run. A kept key's rotation period counts from when the file was written.
    pub key_file: Option<PathBuf>,
    /// The fingerprint key itself (64 hex digits). Never printed.
    pub key: Option<KeySecret>,
    /// Replace the fingerprint key this often, seconds (0: never). After a rotation new
    /// fingerprints cannot be linked to old ones. With `shared_secret_file`, the period
    /// is an epoch on the wall clock (unix time / period): every agent switches together.
    pub rotate_every_secs: u64,
    /// Fleet mode: a file (at least 32 bytes, mode 0600 or 0400) holding a secret shared
    /// by every agent. The key of each epoch is derived from it (HKDF-SHA-256), so all
    /// agents make the same fingerprints; `key` and `key_file` are then ignored.
    pub shared_secret_file: Option<PathBuf>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        let v = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
        Self {
            api_key_headers: v(&["x-api-key", "api-key", "x-auth-token"]),
            query_params: v(&["api_key", "access_token", "token", "key"]),
            session_cookies: v(&[
                "session",
                "sessionid",
                "JSESSIONID",
                "connect.sid",
                "PHPSESSID",
                "_session_id",
            ]),
            key_file: None,
            key: None,
            rotate_every_secs: 86_400,
            shared_secret_file: None,
        }
    }
}

/// A secret string from the config: printed and serialised as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySecret(String);

impl KeySecret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for KeySecret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for KeySecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

/// What kind of credential an identity is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A bearer token (JWT or opaque): `tok_`.
    Bearer,
    /// The user part of HTTP Basic: `usr_`.
    Basic,
    /// An API key: `key_`.
    ApiKey,
    /// A session cookie: `ck_`.
    Cookie,
}

impl CredentialKind {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Bearer => "tok",
            Self::Basic => "usr",
            Self::ApiKey => "key",
            Self::Cookie => "ck",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "bearer",
            Self::Basic => "basic",
            Self::ApiKey => "api_key",
            Self::Cookie => "cookie",
        }
    }

    /// Hash domain. Bearer tokens and API keys share one so that the same secret sent
    /// once in a header and once in the query string gives the same hex digits.
    fn domain(self) -> &'static str {
        match self {
            Self::Bearer | Self::ApiKey => "cred",
            Self::Basic => "basic-user",
            Self::Cookie => "cookie",
        }
    }
}

/// Where in the request the credential was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialSource {
    Header,
    Query,
    Cookie,
}

impl CredentialSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Query => "query",
            Self::Cookie => "cookie",
        }
    }
}

/// Why an `Authorization: Basic` value could not be split into user and password.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BasicError {
    BadBase64,
    /// Decoded, but no `:` between user and password.
    NoColon,
}

/// What the credential's text looked like.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "format", content = "detail")]
pub enum TokenFormat {
    /// Not decodable: an opaque token, key or cookie value.
    Opaque,
    /// A JWT, decoded (not verified).
    Jwt(Box<JwtClaims>),
    /// Looked like a JWT (three parts) but could not be decoded.
    JwtMalformed(JwtError),
    /// Basic credentials; the fingerprint is of the user part only.
    BasicUser,
    /// Basic credentials that could not be decoded; the fingerprint is of the whole value.
    BasicMalformed(BasicError),
}

impl TokenFormat {
    pub fn jwt(&self) -> Option<&JwtClaims> {
        match self {
            Self::Jwt(c) => Some(c),
            _ => None,
        }
    }
}

fn ser_str<S: Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

/// A credential found in one exchange, as a fingerprint. Holds nothing raw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub fingerprint: Fingerprint,
    pub kind: CredentialKind,
    pub source: CredentialSource,
    /// The configured header, parameter or cookie name it was found under.
    #[serde(serialize_with = "ser_str")]
    pub location: Arc<str>,
    pub format: TokenFormat,
    /// Access tier (`[tiers]`), when tiers are configured.
    #[serde(skip)]
    pub tier: Option<Arc<str>>,
    /// Hash under the freeze key, when asked for ([`Extractor::extract_durable`]).
    #[serde(skip)]
    pub durable: Option<DurableHash>,
}

impl Identity {
    pub fn jwt(&self) -> Option<&JwtClaims> {
        self.format.jwt()
    }
}

/// Finds credentials in exchanges. Build once from the config.
#[derive(Clone, Debug)]
pub struct Extractor {
    api_key_headers: Vec<Arc<str>>,
    query_params: Vec<Arc<str>>,
    session_cookies: Vec<Arc<str>>,
    authorization: Arc<str>,
    tiers: TierRules,
}

impl Default for Extractor {
    fn default() -> Self {
        Self::new(&IdentityConfig::default())
    }
}

fn names(list: &[String], lower: bool) -> Vec<Arc<str>> {
    let mut out: Vec<Arc<str>> = Vec::new();
    for n in list {
        let n = n.trim();
        let n = if lower {
            n.to_ascii_lowercase()
        } else {
            n.to_string()
        };
        if !n.is_empty() && !out.iter().any(|o| o.eq_ignore_ascii_case(&n)) {
            out.push(Arc::from(n));
        }
    }
    out
}

/// `%XX` decoding of a query value (`+` is kept: base64 tokens use it).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

impl Extractor {
    pub fn new(config: &IdentityConfig) -> Self {
        Self {
            api_key_headers: names(&config.api_key_headers, true),
            query_params: names(&config.query_params, false),
            session_cookies: names(&config.session_cookies, false),
            authorization: Arc::from("authorization"),
            tiers: TierRules::default(),
        }
    }

    /// Place credentials in access tiers with these rules.
    pub fn with_tiers(mut self, tiers: TierRules) -> Self {
        self.tiers = tiers;
        self
    }

    /// Headers this extractor reads (for the capture allowlist).
    pub fn header_names(&self) -> Vec<String> {
        let mut v = vec!["authorization".to_string(), "cookie".to_string()];
        v.extend(self.api_key_headers.iter().map(|s| s.to_string()));
        v
    }

    /// Every credential in the exchange, primary first, fingerprinted with `key`.
    pub fn extract(&self, ex: &Exchange, key: &FingerprintKey) -> Vec<Identity> {
        let mut out = Vec::new();
        self.extract_with(
            ex,
            &Keys {
                fp: key,
                freeze: None,
            },
            None,
            &mut out,
        );
        out
    }

    /// As [`Self::extract`], into `out` (cleared first), with what `cache` knows of
    /// credentials seen before: a credential sent again costs a keyed hash and a lookup.
    /// The identities are the same as [`Self::extract`]'s.
    pub fn extract_cached(
        &self,
        ex: &Exchange,
        key: &FingerprintKey,
        cache: &mut CredentialCache,
        out: &mut Vec<Identity>,
    ) {
        cache.use_key(key);
        self.extract_with(
            ex,
            &Keys {
                fp: key,
                freeze: None,
            },
            Some(cache),
            out,
        );
    }

    /// As [`Self::extract`], with each identity's durable hash under `freeze` too (one
    /// more HMAC per credential: done once per session, when it is made).
    pub fn extract_durable(
        &self,
        ex: &Exchange,
        key: &FingerprintKey,
        freeze: &FreezeKey,
    ) -> Vec<Identity> {
        let mut out = Vec::new();
        self.extract_with(
            ex,
            &Keys {
                fp: key,
                freeze: Some(freeze),
            },
            None,
            &mut out,
        );
        out
    }

    /// The identity of one credential: from `cache` when given (never with durable
    /// hashes), else made by `make`.
    fn resolve(
        cache: Option<&mut CredentialCache>,
        read_as: ReadAs,
        raw: &[u8],
        source: CredentialSource,
        location: &Arc<str>,
        make: impl FnOnce() -> Identity,
    ) -> Identity {
        match cache {
            Some(c) => c.identity(read_as, raw, source, location, make),
            None => make(),
        }
    }

    fn extract_with(
        &self,
        ex: &Exchange,
        key: &Keys<'_>,
        mut cache: Option<&mut CredentialCache>,
        out: &mut Vec<Identity>,
    ) {
        out.clear();
        // With durable hashes, nothing comes from (or goes to) the cache.
        if key.freeze.is_some() {
            cache = None;
        }
        fn push(out: &mut Vec<Identity>, id: Identity) {
            if out.len() < MAX_IDENTITIES && !out.iter().any(|o| o.fingerprint == id.fingerprint) {
                out.push(id);
            }
        }
        for h in &ex.request_headers {
            if h.name == "authorization" {
                if let Some(id) = self.authorization(&h.value, key, cache.as_deref_mut()) {
                    push(out, id);
                }
            }
        }
        for name in &self.api_key_headers {
            for h in ex.request_headers.iter().filter(|h| *h.name == **name) {
                let v = h.value.trim();
                if !v.is_empty() {
                    let id = Self::resolve(
                        cache.as_deref_mut(),
                        ReadAs::ApiKey,
                        v.as_bytes(),
                        CredentialSource::Header,
                        name,
                        || {
                            self.opaque_or_jwt(
                                CredentialKind::ApiKey,
                                CredentialSource::Header,
                                name,
                                v.as_bytes(),
                                key,
                            )
                        },
                    );
                    push(out, id);
                }
            }
        }
        if let Some(q) = ex.query.as_deref() {
            for pair in q.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let Some(name) = self.query_params.iter().find(|n| n.eq_ignore_ascii_case(k))
                else {
                    continue;
                };
                let value = percent_decode(v);
                if value.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                // OAuth's `access_token` is a bearer token; a JWT is one wherever it is.
                let (kind, read_as) = if name.eq_ignore_ascii_case("access_token") {
                    (CredentialKind::Bearer, ReadAs::Bearer)
                } else {
                    (CredentialKind::ApiKey, ReadAs::ApiKey)
                };
                let id = Self::resolve(
                    cache.as_deref_mut(),
                    read_as,
                    &value,
                    CredentialSource::Query,
                    name,
                    || self.opaque_or_jwt(kind, CredentialSource::Query, name, &value, key),
                );
                push(out, id);
                let mut value = value;
                value.fill(0);
                std::hint::black_box(&value);
            }
        }
        for h in ex.request_headers.iter().filter(|h| h.name == "cookie") {
            for c in h.value.split(';') {
                let Some((k, v)) = c.split_once('=') else {
                    continue;
                };
                let Some(name) = self
                    .session_cookies
                    .iter()
                    .find(|n| n.eq_ignore_ascii_case(k.trim()))
                else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                if v.is_empty() {
                    continue;
                }
                let id = Self::resolve(
                    cache.as_deref_mut(),
                    ReadAs::Cookie,
                    v.as_bytes(),
                    CredentialSource::Cookie,
                    name,
                    || {
                        let (fingerprint, durable) = key.identify(
                            CredentialKind::Cookie.prefix(),
                            CredentialKind::Cookie.domain(),
                            v.as_bytes(),
                        );
                        Identity {
                            fingerprint,
                            kind: CredentialKind::Cookie,
                            source: CredentialSource::Cookie,
                            location: Arc::clone(name),
                            format: TokenFormat::Opaque,
                            tier: None,
                            durable,
                        }
                    },
                );
                push(out, id);
            }
        }
        // Basic users and cookies: the default tier.
        for id in out.iter_mut().filter(|i| i.tier.is_none()) {
            id.tier = self.tiers.tier_of(b"", false, None);
        }
    }

    fn authorization(
        &self,
        value: &str,
        key: &Keys<'_>,
        cache: Option<&mut CredentialCache>,
    ) -> Option<Identity> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(char::is_whitespace)?;
        let rest = rest.trim();
        if rest.is_empty() {
            return None;
        }
        let location = &self.authorization;
        if scheme.eq_ignore_ascii_case("bearer") {
            Some(Self::resolve(
                cache,
                ReadAs::Bearer,
                rest.as_bytes(),
                CredentialSource::Header,
                location,
                || {
                    self.opaque_or_jwt(
                        CredentialKind::Bearer,
                        CredentialSource::Header,
                        location,
                        rest.as_bytes(),
                        key,
                    )
                },
            ))
        } else if scheme.eq_ignore_ascii_case("basic") {
            Some(Self::resolve(
                cache,
                ReadAs::Basic,
                rest.as_bytes(),
                CredentialSource::Header,
                location,
                || basic(rest, location, key),
            ))
        } else {
            None
        }
    }
}

/// A bearer token / API key / query credential: a JWT if it decodes as one.
impl Extractor {
    fn opaque_or_jwt(
        &self,
        kind: CredentialKind,
        source: CredentialSource,
        location: &Arc<str>,
        raw: &[u8],
        key: &Keys<'_>,
    ) -> Identity {
        let text = std::str::from_utf8(raw).ok();
        let (kind, format) = match text.map(|t| jwt::decode(t, key.fp)) {
            Some(Ok(claims)) => (CredentialKind::Bearer, TokenFormat::Jwt(Box::new(claims))),
            Some(Err(JwtError::NotJwt)) | None => (kind, TokenFormat::Opaque),
            // Only a bearer token is expected to be a JWT; for keys a dotted value is opaque.
            Some(Err(e)) if kind == CredentialKind::Bearer => (kind, TokenFormat::JwtMalformed(e)),
            Some(Err(_)) => (kind, TokenFormat::Opaque),
        };
        let tier = self
            .tiers
            .tier_of(raw, kind == CredentialKind::ApiKey, format.jwt());
        let (fingerprint, durable) = key.identify(kind.prefix(), kind.domain(), raw);
        Identity {
            fingerprint,
            kind,
            source,
            location: Arc::clone(location),
            format,
            tier,
            durable,
        }
    }
}

fn basic(b64: &str, location: &Arc<str>, key: &Keys<'_>) -> Identity {
    let kind = CredentialKind::Basic;
    let decoded = STANDARD
        .decode(b64)
        .or_else(|_| STANDARD_NO_PAD.decode(b64.trim_end_matches('=')));
    let ((fingerprint, durable), format) = match decoded {
        Ok(mut bytes) => {
            let result = match bytes.iter().position(|&b| b == b':') {
                Some(colon) => (
                    key.identify(kind.prefix(), kind.domain(), &bytes[..colon]),
                    TokenFormat::BasicUser,
                ),
                None => (
                    key.identify(kind.prefix(), "basic-raw", b64.as_bytes()),
                    TokenFormat::BasicMalformed(BasicError::NoColon),
                ),
            };
            // The password was in this buffer: overwrite it before it is freed.
            bytes.fill(0);
            std::hint::black_box(&bytes);
            result
        }
        Err(_) => (
            key.identify(kind.prefix(), "basic-raw", b64.as_bytes()),
            TokenFormat::BasicMalformed(BasicError::BadBase64),
        ),
    };
    Identity {
        fingerprint,
        kind,
        source: CredentialSource::Header,
        location: Arc::clone(location),
        format,
        tier: None,
        durable,
    }
}

/// The keys one extraction hashes with.
struct Keys<'a> {
    fp: &'a FingerprintKey,
    freeze: Option<&'a FreezeKey>,
}

impl Keys<'_> {
    fn identify(
        &self,
        prefix: &str,
        domain: &str,
        raw: &[u8],
    ) -> (Fingerprint, Option<DurableHash>) {
        (
            self.fp.fingerprint(prefix, domain, raw),
            self.freeze.map(|k| k.hash(domain, raw)),
        )
    }
}

/// Longest credential accepted from an operator (lookup, freeze by credential).
pub const MAX_CREDENTIAL: usize = 8192;

/// Why a credential typed by an operator was refused. Never holds the credential.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialInputError {
    #[error("empty credential")]
    Empty,
    #[error("credential longer than {MAX_CREDENTIAL} bytes")]
    TooLong,
    #[error("credential must be one line")]
    MultiLine,
    #[error("Basic credentials must be base64 of user:password")]
    BadBasic,
}

/// One way a credential typed by an operator can appear in traffic: its kind and the
/// bytes its fingerprint is made of. The bytes are overwritten when dropped; `Debug`
/// shows only the kind.
pub struct Candidate {
    pub kind: CredentialKind,
    raw: Vec<u8>,
}

impl fmt::Debug for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidate")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        self.raw.fill(0);
        std::hint::black_box(&self.raw);
    }
}

impl Candidate {
    fn new(kind: CredentialKind, raw: &[u8]) -> Self {
        Self {
            kind,
            raw: raw.to_vec(),
        }
    }

    /// The fingerprints this credential has under `key`: a bearer token's hex digits
    /// are shared with the same text as an API key (`tok_`/`key_`).
    pub fn fingerprints(&self, key: &FingerprintKey) -> Vec<Fingerprint> {
        let domain = self.kind.domain();
        let prefixes: &[CredentialKind] = match self.kind {
            CredentialKind::Bearer | CredentialKind::ApiKey => {
                &[CredentialKind::Bearer, CredentialKind::ApiKey]
            }
            k => std::slice::from_ref(match k {
                CredentialKind::Basic => &CredentialKind::Basic,
                _ => &CredentialKind::Cookie,
            }),
        };
        prefixes
            .iter()
            .map(|k| key.fingerprint(k.prefix(), domain, &self.raw))
            .collect()
    }

    /// Its durable hash (the same as the one computed from traffic).
    pub fn durable(&self, key: &FreezeKey) -> DurableHash {
        key.hash(self.kind.domain(), &self.raw)
    }
}

/// The ways an operator's credential can appear in traffic. Accepted: a bare value (a
/// token, API key or cookie value; with a `:`, also the user of Basic `user:password`),
/// an `Authorization` value (`Bearer xyz`, `Basic base64`), optionally after
/// `Authorization:`.
pub fn credential_candidates(input: &str) -> Result<Vec<Candidate>, CredentialInputError> {
    let v = input.trim();
    if v.len() > MAX_CREDENTIAL {
        return Err(CredentialInputError::TooLong);
    }
    if v.contains(['\n', '\r']) {
        return Err(CredentialInputError::MultiLine);
    }
    let v = match v.split_once(':') {
        Some((name, rest)) if name.trim().eq_ignore_ascii_case("authorization") => rest.trim(),
        _ => v,
    };
    // Empty, or a scheme without its credential.
    if v.is_empty() || v.eq_ignore_ascii_case("bearer") || v.eq_ignore_ascii_case("basic") {
        return Err(CredentialInputError::Empty);
    }
    if let Some((scheme, rest)) = v.split_once(char::is_whitespace) {
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            if rest.is_empty() {
                return Err(CredentialInputError::Empty);
            }
            return Ok(vec![Candidate::new(
                CredentialKind::Bearer,
                rest.as_bytes(),
            )]);
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let mut bytes = STANDARD
                .decode(rest)
                .or_else(|_| STANDARD_NO_PAD.decode(rest.trim_end_matches('=')))
                .map_err(|_| CredentialInputError::BadBasic)?;
            let out = match bytes.iter().position(|&b| b == b':') {
                Some(colon) if colon > 0 => {
                    Ok(vec![Candidate::new(CredentialKind::Basic, &bytes[..colon])])
                }
                _ => Err(CredentialInputError::BadBasic),
            };
            bytes.fill(0);
            std::hint::black_box(&bytes);
            return out;
        }
    }
    let mut out = vec![
        Candidate::new(CredentialKind::Bearer, v.as_bytes()),
        Candidate::new(CredentialKind::Cookie, v.as_bytes()),
    ];
    if let Some((user, _)) = v.split_once(':').filter(|(u, _)| !u.is_empty()) {
        out.push(Candidate::new(CredentialKind::Basic, user.as_bytes()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::testutil::ExchangeBuilder;

    fn key() -> FingerprintKey {
        FingerprintKey::from_bytes([3; 32])
    }

    fn extract(b: ExchangeBuilder) -> Vec<Identity> {
        Extractor::default().extract(&b.build(), &key())
    }

    fn assert_clean(ids: &[Identity], secrets: &[&str]) {
        let printed = format!("{ids:?} {}", serde_json::to_string(ids).unwrap());
        for s in secrets {
            assert!(!printed.contains(s), "{s} in {printed}");
        }
    }

    #[test]
    fn bearer_opaque() {
        let ids = extract(ExchangeBuilder::new().header("authorization", "Bearer OPAQUE123secret"));
        assert_eq!(ids.len(), 1);
        let id = &ids[0];
        assert_eq!(id.kind, CredentialKind::Bearer);
        assert_eq!(id.source, CredentialSource::Header);
        assert_eq!(&*id.location, "authorization");
        assert_eq!(id.format, TokenFormat::Opaque);
        assert!(id.fingerprint.as_str().starts_with("tok_"));
        assert_clean(&ids, &["OPAQUE123secret"]);
        // Scheme is case-insensitive; same token, same fingerprint.
        let again =
            extract(ExchangeBuilder::new().header("authorization", "bearer  OPAQUE123secret"));
        assert_eq!(again[0].fingerprint, id.fingerprint);
    }

    #[test]
    fn bearer_jwt() {
        let t = jwt::make_token(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"sub":"carol-SUBJECT","exp":2000000000,"iss":"me"}"#,
        );
        let ids = extract(ExchangeBuilder::new().header("authorization", &format!("Bearer {t}")));
        let c = ids[0].jwt().unwrap();
        assert_eq!(c.alg.as_deref(), Some("HS256"));
        assert_eq!(c.exp, Some(2_000_000_000));
        assert!(c.sub.is_some());
        assert_clean(&ids, &[&t, "carol-SUBJECT", t.split('.').nth(1).unwrap()]);
    }

    #[test]
    fn bearer_malformed_jwt() {
        let ids = extract(ExchangeBuilder::new().header("authorization", "Bearer e*J.e*J.sig"));
        assert_eq!(
            ids[0].format,
            TokenFormat::JwtMalformed(JwtError::BadBase64)
        );
        let ids = extract(
            ExchangeBuilder::new().header("authorization", "Bearer bm90IGpzb24.bm90IGpzb24.x"),
        );
        assert_eq!(ids[0].format, TokenFormat::JwtMalformed(JwtError::BadJson));
        // Empty or scheme-only values carry no credential.
        assert!(extract(ExchangeBuilder::new().header("authorization", "Bearer ")).is_empty());
        assert!(extract(ExchangeBuilder::new().header("authorization", "Bearer")).is_empty());
        assert!(extract(ExchangeBuilder::new().header("authorization", "Digest x=1")).is_empty());
    }

    #[test]
    fn basic_user_only() {
        let v = format!("Basic {}", STANDARD.encode("dave:PASSWORD-1"));
        let ids = extract(ExchangeBuilder::new().header("authorization", &v));
        assert_eq!(ids[0].kind, CredentialKind::Basic);
        assert_eq!(ids[0].format, TokenFormat::BasicUser);
        assert!(ids[0].fingerprint.as_str().starts_with("usr_"));
        // Same user, other password: same fingerprint.
        let v2 = format!("Basic {}", STANDARD.encode("dave:other"));
        let ids2 = extract(ExchangeBuilder::new().header("authorization", &v2));
        assert_eq!(ids[0].fingerprint, ids2[0].fingerprint);
        assert_clean(&ids, &["dave", "PASSWORD-1", &v[6..]]);
        // Unpadded base64 accepted.
        let v3 = format!("Basic {}", STANDARD_NO_PAD.encode("dave:x1"));
        let ids3 = extract(ExchangeBuilder::new().header("authorization", &v3));
        assert_eq!(ids3[0].fingerprint, ids[0].fingerprint);
    }

    #[test]
    fn basic_malformed() {
        let ids = extract(ExchangeBuilder::new().header("authorization", "Basic !!!notb64"));
        assert_eq!(
            ids[0].format,
            TokenFormat::BasicMalformed(BasicError::BadBase64)
        );
        let v = format!("Basic {}", STANDARD.encode("no-colon-SECRET"));
        let ids = extract(ExchangeBuilder::new().header("authorization", &v));
        assert_eq!(
            ids[0].format,
            TokenFormat::BasicMalformed(BasicError::NoColon)
        );
        assert_clean(&ids, &["no-colon-SECRET", &v[6..]]);
    }

    #[test]
    fn api_key_headers() {
        for h in ["x-api-key", "api-key", "x-auth-token"] {
            let ids = extract(ExchangeBuilder::new().header(h, " KEY-abc-123 "));
            assert_eq!(ids.len(), 1, "{h}");
            assert_eq!(ids[0].kind, CredentialKind::ApiKey);
            assert_eq!(&*ids[0].location, h);
            assert!(ids[0].fingerprint.as_str().starts_with("key_"));
            assert_clean(&ids, &["KEY-abc-123"]);
        }
        // Configurable list.
        let cfg = IdentityConfig {
            api_key_headers: vec!["X-Custom-Key".into()],
            ..IdentityConfig::default()
        };
        let ex = ExchangeBuilder::new()
            .header("x-custom-key", "K1")
            .header("x-api-key", "K2")
            .build();
        let ids = Extractor::new(&cfg).extract(&ex, &key());
        assert_eq!(ids.len(), 1);
        assert_eq!(&*ids[0].location, "x-custom-key");
        // Empty value ignored.
        assert!(extract(ExchangeBuilder::new().header("x-api-key", "  ")).is_empty());
    }

    #[test]
    fn query_credentials() {
        let ids = extract(ExchangeBuilder::new().query("page=2&api_key=QKEY-999&x=1"));
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].source, CredentialSource::Query);
        assert_eq!(ids[0].kind, CredentialKind::ApiKey);
        assert_eq!(&*ids[0].location, "api_key");
        assert_clean(&ids, &["QKEY-999"]);
        // The same key in a header gives the same fingerprint.
        let h = extract(ExchangeBuilder::new().header("x-api-key", "QKEY-999"));
        assert_eq!(h[0].fingerprint, ids[0].fingerprint);
        // access_token is a bearer token; percent-decoding applies.
        let q = extract(ExchangeBuilder::new().query("access_token=a%2Bb"));
        let b = extract(ExchangeBuilder::new().header("authorization", "Bearer a+b"));
        assert_eq!(q[0].fingerprint, b[0].fingerprint);
        // Names are case-insensitive; empty values and other params ignored.
        assert_eq!(extract(ExchangeBuilder::new().query("TOKEN=t1")).len(), 1);
        assert!(extract(ExchangeBuilder::new().query("key=&token")).is_empty());
        assert!(extract(ExchangeBuilder::new().query("keys=1&q=token")).is_empty());
        // A JWT in the query is a bearer token.
        let t = jwt::make_token(r#"{"alg":"none"}"#, "{}");
        let j = extract(ExchangeBuilder::new().query(&format!("token={t}")));
        assert_eq!(j[0].kind, CredentialKind::Bearer);
        assert!(j[0].jwt().unwrap().alg_none());
    }

    #[test]
    fn session_cookies() {
        let ids = extract(
            ExchangeBuilder::new()
                .header("cookie", "theme=dark; JSESSIONID=\"CK-SECRET-1\"; other=2"),
        );
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].kind, CredentialKind::Cookie);
        assert_eq!(ids[0].source, CredentialSource::Cookie);
        assert_eq!(&*ids[0].location, "JSESSIONID");
        assert!(ids[0].fingerprint.as_str().starts_with("ck_"));
        assert_clean(&ids, &["CK-SECRET-1"]);
        let c2 = extract(ExchangeBuilder::new().header("cookie", "connect.sid=s%3Aabc"));
        assert_eq!(&*c2[0].location, "connect.sid");
        assert!(
            extract(ExchangeBuilder::new().header("cookie", "theme=dark; session=")).is_empty()
        );
        assert!(extract(ExchangeBuilder::new().header("cookie", "garbage")).is_empty());
    }

    #[test]
    fn order_and_dedup() {
        let ids = extract(
            ExchangeBuilder::new()
                .header("cookie", "session=S1")
                .header("x-api-key", "K1")
                .header("authorization", "Bearer T1")
                .query("api_key=K1"),
        );
        let kinds: Vec<_> = ids.iter().map(|i| i.kind).collect();
        // The query key equals the header key: one identity.
        assert_eq!(
            kinds,
            vec![
                CredentialKind::Bearer,
                CredentialKind::ApiKey,
                CredentialKind::Cookie
            ]
        );
    }

    #[test]
    fn config_defaults_and_secret_redacted() {
        let cfg: IdentityConfig = toml::from_str(
            r#"
            key = "0000000000000000000000000000000000000000000000000000000000000001"
            query_params = ["sig"]
            "#,
        )
        .unwrap();
        assert_eq!(
            cfg.api_key_headers,
            IdentityConfig::default().api_key_headers
        );
        assert_eq!(cfg.query_params, vec!["sig"]);
        let printed = format!("{cfg:?} {}", serde_json::to_string(&cfg).unwrap());
        assert!(!printed.contains("0001"), "{printed}");
        assert!(FingerprintKey::from_config(&cfg, None, std::time::SystemTime::now()).is_ok());
        assert!(toml::from_str::<IdentityConfig>("nope = 1").is_err());
        let empty: IdentityConfig = toml::from_str("").unwrap();
        assert_eq!(empty, IdentityConfig::default());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%zz%4"), b"a b%zz%4");
        assert_eq!(percent_decode("%41"), b"A");
        assert_eq!(percent_decode("%"), b"%");
    }
}
