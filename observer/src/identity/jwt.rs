//! JWT decoding without verification: the header and payload are base64url JSON; the
//! signature is ignored. Only a few claims are kept; `sub` and `jti` only as fingerprints.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde::Serialize;
use serde_json::Value;

use super::key::{Fingerprint, FingerprintKey};

/// Longest kept string claim (longer ones are cut).
const MAX_CLAIM_CHARS: usize = 128;
/// Most `aud` / `scope` entries kept.
const MAX_LIST: usize = 16;
/// Largest token decoded (bytes); beyond it the token is treated as malformed.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token is not a decodable JWT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JwtError {
    /// Not three dot-separated parts: an opaque token.
    NotJwt,
    /// A part is not base64url.
    BadBase64,
    /// Header or payload is not a JSON object.
    BadJson,
    /// Larger than this decoder accepts.
    TooLarge,
}

impl JwtError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotJwt => "not_jwt",
            Self::BadBase64 => "bad_base64",
            Self::BadJson => "bad_json",
            Self::TooLarge => "too_large",
        }
    }
}

/// What is kept of a JWT. Times are Unix seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JwtClaims {
    pub alg: Option<String>,
    pub typ: Option<String>,
    pub exp: Option<i64>,
    pub iat: Option<i64>,
    pub nbf: Option<i64>,
    pub iss: Option<String>,
    pub aud: Vec<String>,
    /// `scope` (space separated) or `scp` (string or array).
    pub scope: Vec<String>,
    pub sub: Option<Fingerprint>,
    pub jti: Option<Fingerprint>,
    /// `plan` or `tier` claim (an access tier's name).
    pub plan: Option<String>,
}

impl JwtClaims {
    /// `alg` is `none` (any case): an unsigned token.
    pub fn alg_none(&self) -> bool {
        self.alg
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case("none"))
    }
}

fn short(s: &str) -> String {
    s.chars().take(MAX_CLAIM_CHARS).collect()
}

fn string_claim(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(short)
}

fn time_claim(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        // Some issuers send numeric strings.
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn list_claim(v: Option<&Value>, split_spaces: bool) -> Vec<String> {
    match v {
        Some(Value::String(s)) if split_spaces => {
            s.split_whitespace().take(MAX_LIST).map(short).collect()
        }
        Some(Value::String(s)) => vec![short(s)],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .take(MAX_LIST)
            .map(short)
            .collect(),
        _ => Vec::new(),
    }
}

/// Fingerprint an opaque id claim (`sub`, `jti`: string or number).
fn id_claim(v: Option<&Value>, name: &str, key: &FingerprintKey) -> Option<Fingerprint> {
    match v? {
        Value::String(s) => Some(key.fingerprint(name, name, s.as_bytes())),
        Value::Number(n) => Some(key.fingerprint(name, name, n.to_string().as_bytes())),
        _ => None,
    }
}

fn decode_part(part: &str) -> Result<serde_json::Map<String, Value>, JwtError> {
    // Tolerate padding some encoders add.
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| JwtError::BadBase64)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::BadJson),
    }
}

/// Decode a token's header and payload. `sub` and `jti` are fingerprinted with `key`
/// (prefixes `sub_`, `jti_`) and their text dropped before returning.
pub fn decode(token: &str, key: &FingerprintKey) -> Result<JwtClaims, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::NotJwt);
    };
    if header.is_empty() || payload.is_empty() {
        return Err(JwtError::NotJwt);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    let header = decode_part(header)?;
    let payload = decode_part(payload)?;
    let scope = match payload.get("scope") {
        Some(v) => list_claim(Some(v), true),
        None => list_claim(payload.get("scp"), true),
    };
    Ok(JwtClaims {
        alg: string_claim(header.get("alg")),
        typ: string_claim(header.get("typ")),
        exp: time_claim(payload.get("exp")),
        iat: time_claim(payload.get("iat")),
        nbf: time_claim(payload.get("nbf")),
        iss: string_claim(payload.get("iss")),
        aud: list_claim(payload.get("aud"), false),
        scope,
        sub: id_claim(payload.get("sub"), "sub", key),
        jti: id_claim(payload.get("jti"), "jti", key),
        plan: string_claim(payload.get("plan").or_else(|| payload.get("tier"))),
    })
}

/// Build an unsigned test token from JSON header and payload.
#[cfg(test)]
pub(crate) fn make_token(header: &str, payload: &str) -> String {
    format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FingerprintKey {
        FingerprintKey::from_bytes([9; 32])
    }

    #[test]
    fn decodes_claims() {
        let t = make_token(
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"sub":"alice@example.com","jti":"J-1","exp":1700000000,"iat":1699990000.5,
                "nbf":"1699990000","iss":"https://issuer","aud":["a","b"],"scope":"read write"}"#,
        );
        let c = decode(&t, &key()).unwrap();
        assert_eq!(c.alg.as_deref(), Some("RS256"));
        assert_eq!(c.typ.as_deref(), Some("JWT"));
        assert_eq!(c.exp, Some(1_700_000_000));
        assert_eq!(c.iat, Some(1_699_990_000));
        assert_eq!(c.nbf, Some(1_699_990_000));
        assert_eq!(c.iss.as_deref(), Some("https://issuer"));
        assert_eq!(c.aud, vec!["a", "b"]);
        assert_eq!(c.scope, vec!["read", "write"]);
        let sub = c.sub.clone().unwrap();
        assert!(sub.as_str().starts_with("sub_"));
        assert!(c.jti.clone().unwrap().as_str().starts_with("jti_"));
        let printed = format!("{c:?} {}", serde_json::to_string(&c).unwrap());
        assert!(!printed.contains("alice"), "{printed}");
        assert!(!printed.contains("J-1"), "{printed}");
        assert!(!c.alg_none());
    }

    #[test]
    fn aud_string_and_scp_array() {
        let t = make_token(
            r#"{"alg":"none"}"#,
            r#"{"aud":"api","scp":["x","y"],"sub":42}"#,
        );
        let c = decode(&t, &key()).unwrap();
        assert_eq!(c.aud, vec!["api"]);
        assert_eq!(c.scope, vec!["x", "y"]);
        assert!(c.sub.is_some());
        assert!(c.alg_none());
    }

    #[test]
    fn padded_parts_accepted() {
        let t = make_token(r#"{"alg":"HS256"}"#, r#"{"a":1}"#);
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        parts[0].push_str("==");
        assert!(decode(&parts.join("."), &key()).is_ok());
    }

    #[test]
    fn malformed_classified() {
        let k = key();
        assert_eq!(decode("opaque-token-123", &k), Err(JwtError::NotJwt));
        assert_eq!(decode("a.b", &k), Err(JwtError::NotJwt));
        assert_eq!(decode("a.b.c.d", &k), Err(JwtError::NotJwt));
        assert_eq!(decode("..", &k), Err(JwtError::NotJwt));
        assert_eq!(decode("e*J.e*J.x", &k), Err(JwtError::BadBase64));
        let not_json = format!("{}.{}.x", URL_SAFE_NO_PAD.encode("{}"), "bm90IGpzb24");
        assert_eq!(decode(&not_json, &k), Err(JwtError::BadJson));
        let array = make_token("[1]", "{}");
        assert_eq!(decode(&array, &k), Err(JwtError::BadJson));
        let huge = make_token("{}", &format!(r#"{{"x":"{}"}}"#, "a".repeat(20_000)));
        assert_eq!(decode(&huge, &k), Err(JwtError::TooLarge));
        // Arbitrary bytes never panic.
        for s in ["...", ".a.", "\u{fe0f}.\u{0}.x", "eyJ.eyJ.", "%%%.%%%.%%%"] {
            let _ = decode(s, &k);
        }
    }

    #[test]
    fn long_claims_cut() {
        let t = make_token(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"iss":"{}"}}"#, "i".repeat(1000)),
        );
        let c = decode(&t, &key()).unwrap();
        assert_eq!(c.iss.unwrap().len(), MAX_CLAIM_CHARS);
    }
}
