//! Route templates: a request's method and path with object ids replaced by `{id}`
//! (`GET /users/{id}/orders`). Computed once per exchange ([`RouteTemplate::of`]) and
//! shared by the metrics (bounded label) and the sessions (routes, distinct ids).

/// A request's route, and where the id segments of its path are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTemplate {
    /// `GET`, or `OTHER` for anything that is not a plain method name.
    pub method: &'static str,
    /// The path template, e.g. `/users/{id}/orders`.
    pub path: String,
    /// Byte ranges of the id segments in the exchange's path.
    id_spans: Vec<(u32, u32)>,
    /// Made from a configured pattern (its literal segments are the user's words).
    pub configured: bool,
}

impl RouteTemplate {
    /// Template `method` and `path`.
    pub fn of(method: &str, path: &str) -> Self {
        let base = path.as_ptr() as usize;
        let mut id_spans = Vec::new();
        let template = template_with(path, |seg| {
            let start = (seg.as_ptr() as usize - base) as u32;
            id_spans.push((start, start + seg.len() as u32));
        });
        Self {
            method: method_label(method),
            path: template,
            id_spans,
            configured: false,
        }
    }

    /// The route of a gRPC call: `/package.Service/Method` verbatim (service and method
    /// names come from the API's definition, not from its data, and their dotted names
    /// would otherwise look like opaque ids). Only names shaped as protobuf names are
    /// taken so (dotted identifiers, the service and the method in CamelCase, as the
    /// protobuf style has them); any other path is templated as usual.
    pub fn grpc(method: &str, path: &str) -> Self {
        let ident = |s: &str| {
            s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        let camel = |s: &str| s.bytes().next().is_some_and(|b| b.is_ascii_uppercase());
        let service_ok = |s: &str| {
            s.len() <= 100 && s.split('.').all(ident) && s.rsplit('.').next().is_some_and(camel)
        };
        let rpc_ok = |s: &str| s.len() <= 100 && ident(s) && camel(s);
        match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
            Some((service, rpc)) if service_ok(service) && rpc_ok(rpc) => Self {
                method: method_label(method),
                path: path.to_string(),
                id_spans: Vec::new(),
                configured: false,
            },
            _ => Self::of(method, path),
        }
    }

    /// Append `GET /users/{id}/orders` to `out` (a caller's reused buffer).
    pub fn write_key(&self, out: &mut String) {
        out.push_str(self.method);
        out.push(' ');
        out.push_str(&self.path);
    }

    /// The id segments of `path` (the path this template was made from).
    pub fn ids<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.id_spans
            .iter()
            .filter_map(move |&(a, b)| path.get(a as usize..b as usize))
    }

    pub fn has_ids(&self) -> bool {
        !self.id_spans.is_empty()
    }
}

/// Route patterns from the configuration (`/users/{user_id}/orders`): a path that
/// matches one takes the pattern as its template, whatever its segments look like.
/// `{name}` matches one non-empty segment; a trailing `{name...}` matches the rest.
#[derive(Clone, Debug, Default)]
pub struct RoutePatterns {
    patterns: Vec<Pattern>,
}

#[derive(Clone, Debug)]
struct Pattern {
    text: String,
    segments: Vec<PatternSegment>,
}

#[derive(Clone, Debug, PartialEq)]
enum PatternSegment {
    Literal(String),
    Param,
    Rest,
}

impl RoutePatterns {
    /// Parse the patterns; the error names the pattern and why it is refused.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let patterns = patterns
            .iter()
            .map(|p| Pattern::parse(p).map_err(|why| format!("{p:?}: {why}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The template of the first pattern `path` matches.
    pub fn route(&self, method: &str, path: &str) -> Option<RouteTemplate> {
        self.patterns.iter().find_map(|p| p.matches(method, path))
    }
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("does not start with /".into());
        };
        let mut segments = Vec::new();
        let parts: Vec<&str> = rest.split('/').collect();
        for (i, seg) in parts.iter().enumerate() {
            let segment = match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => {
                    let (name, rest) = match name.strip_suffix("...") {
                        Some(n) => (n, true),
                        None => (name, false),
                    };
                    if name.is_empty()
                        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return Err(format!("{seg:?} is not a {{name}} placeholder"));
                    }
                    if rest && i + 1 != parts.len() {
                        return Err(format!("{seg:?} may only end a pattern"));
                    }
                    if rest {
                        PatternSegment::Rest
                    } else {
                        PatternSegment::Param
                    }
                }
                None if seg.contains(['{', '}']) => {
                    return Err(format!("{seg:?} mixes text and a placeholder"))
                }
                None if !is_safe_literal(seg) => {
                    return Err(format!("{seg:?} cannot be a route label"))
                }
                None => PatternSegment::Literal(seg.to_string()),
            };
            segments.push(segment);
        }
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    fn matches(&self, method: &str, path: &str) -> Option<RouteTemplate> {
        let rest = path.strip_prefix('/')?;
        let base = path.as_ptr() as usize;
        let mut id_spans = Vec::new();
        let mut parts = rest.split('/');
        let mut whole = false;
        for segment in &self.segments {
            match segment {
                PatternSegment::Rest => {
                    let start = parts.next().filter(|s| !s.is_empty())?;
                    let a = start.as_ptr() as usize - base;
                    id_spans.push((a as u32, path.len() as u32));
                    whole = true;
                }
                PatternSegment::Param => {
                    let seg = parts.next().filter(|s| !s.is_empty())?;
                    let a = seg.as_ptr() as usize - base;
                    id_spans.push((a as u32, (a + seg.len()) as u32));
                }
                PatternSegment::Literal(lit) => {
                    if parts.next()? != lit {
                        return None;
                    }
                }
            }
        }
        if !whole && parts.next().is_some() {
            return None;
        }
        Some(RouteTemplate {
            method: method_label(method),
            path: self.text.clone(),
            id_spans,
            configured: true,
        })
    }
}

/// Methods with a name of their own; anything else is `OTHER` (bounded cardinality).
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// The method's label: one of the known methods, else `OTHER`.
pub fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(method))
        .copied()
        .unwrap_or("OTHER")
}

/// Placeholder for an id segment.
pub const ID: &str = "{id}";
/// Most path segments kept in a template.
const MAX_SEGMENTS: usize = 12;
/// Longest template kept (bytes).
const MAX_TEMPLATE: usize = 200;

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Whether a path segment is an object id: a number, a UUID, hex of 8+ digits, a long
/// opaque token (20+ characters mixing letters and digits), anything with `@`, or
/// anything over 64 bytes.
pub fn is_id_segment(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) || is_uuid(s) || s.len() > 64 || s.contains('@') {
        return true;
    }
    if s.len() >= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return true;
    }
    s.len() >= 20
        && s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes().any(|b| b.is_ascii_alphabetic())
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'=' | b'+' | b'%')
        })
}

/// Longest segment kept as a literal in a template.
const MAX_LITERAL: usize = 40;

/// File name extensions that make `name.ext` a literal (`openapi.json`, `index.html`).
const EXTENSIONS: &[&str] = &[
    "html", "htm", "json", "xml", "txt", "js", "mjs", "css", "png", "jpg", "jpeg", "gif", "svg",
    "ico", "webp", "pdf", "csv", "yaml", "yml", "php", "map", "woff", "woff2", "ttf", "zip", "gz",
    "tgz", "md", "wasm", "proto", "jsonl", "ndjson", "rss", "atom",
];

/// Collections whose members are people or accounts: the segment after one of these
/// (`/users/jsmith`) is always a parameter, whatever it looks like.
const PERSON_COLLECTIONS: &[&str] = &[
    "users",
    "user",
    "u",
    "accounts",
    "account",
    "profiles",
    "profile",
    "members",
    "member",
    "customers",
    "customer",
    "people",
    "person",
    "persons",
    "employees",
    "employee",
    "owners",
    "owner",
    "authors",
    "author",
    "usernames",
    "username",
    "handles",
    "handle",
    "emails",
    "email",
    "phones",
    "phone",
    "contacts",
    "contact",
    "logins",
    "login",
    "patients",
    "patient",
    "students",
    "student",
    "subscribers",
    "subscriber",
    "followers",
    "following",
    "friends",
    "recipients",
    "senders",
    "by-email",
    "by-phone",
    "by-name",
];

/// Words that may follow a person collection without naming anyone (`/users/me`).
const PERSON_ALIASES: &[&str] = &[
    "me", "self", "current", "search", "new", "count", "all", "list", "batch", "bulk",
];

/// A version such as `v1`, `v2beta1`, `1.0` or `v1.2.3`.
fn is_version(s: &str) -> bool {
    let rest = s.strip_prefix(['v', 'V']).unwrap_or(s);
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return false;
    }
    let tail = &rest[digits..];
    if tail.is_empty() {
        return true;
    }
    if let Some(parts) = tail.strip_prefix('.') {
        return parts
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    }
    // Kubernetes style: v1alpha1, v2beta3.
    ["alpha", "beta"].iter().any(|stage| {
        tail.strip_prefix(stage)
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
    }) && s.starts_with(['v', 'V'])
}

/// Whether a segment that is not an id may appear in a route label as it is: short,
/// plain ASCII (letters, digits, `-`, `_`, `.`, `:`), no percent-encoding, no `+`, at most
/// one digit unless it is a version (`v2`, `1.0`), and a dot only before a known file
/// extension. Anything else (a name such as `john.doe`, a phone number, an encoded
/// value, a date, `jdoe42`) is a parameter.
pub fn is_safe_literal(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    if s.len() > MAX_LITERAL
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return false;
    }
    if is_version(s) {
        return true;
    }
    if s.bytes().filter(u8::is_ascii_digit).count() >= 2 {
        return false;
    }
    match s.rsplit_once('.') {
        None => true,
        // `.well-known`: a hidden name, no extension.
        Some(("", name)) => !name.is_empty(),
        Some((stem, ext)) => {
            !stem.contains('.')
                && EXTENSIONS
                    .iter()
                    .any(|known| known.eq_ignore_ascii_case(ext))
        }
    }
}

fn in_list(list: &[&str], seg: &str) -> bool {
    list.iter().any(|w| w.eq_ignore_ascii_case(seg))
}

/// Template a path: id segments become `{id}` and are handed to `ids` (so callers can count
/// distinct ids without storing the path). Long paths are cut to 12 segments / 200 bytes.
pub fn template_path<'a>(path: &'a str, ids: &mut Vec<&'a str>) -> String {
    template_with(path, |seg| ids.push(seg))
}

/// [`template_path`], handing each id segment to `id`. A segment is a parameter when it
/// looks like an id, when it is not a [safe literal](is_safe_literal), or when it follows
/// a [person collection](PERSON_COLLECTIONS): a template never holds an email address,
/// a user name after `/users/`, a phone number or a percent-encoded value.
fn template_with<'a>(path: &'a str, mut id: impl FnMut(&'a str)) -> String {
    if !path.starts_with('/') {
        // `*` (OPTIONS) is kept; any other target form (an authority) is not printed.
        return match path {
            "" => "/".into(),
            "*" => "*".into(),
            _ => "{target}".into(),
        };
    }
    let mut out = String::with_capacity(path.len().min(MAX_TEMPLATE));
    let mut after_person = false;
    for (n, seg) in path[1..].split('/').enumerate() {
        if n == MAX_SEGMENTS || out.len() > MAX_TEMPLATE {
            out.push_str("/{...}");
            break;
        }
        out.push('/');
        let param = is_id_segment(seg)
            || !is_safe_literal(seg)
            || (after_person && !seg.is_empty() && !in_list(PERSON_ALIASES, seg));
        if param {
            id(seg);
            out.push_str(ID);
            after_person = false;
        } else {
            out.push_str(seg);
            after_person = in_list(PERSON_COLLECTIONS, seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(path: &str) -> String {
        template_path(path, &mut Vec::new())
    }

    #[test]
    fn templates() {
        assert_eq!(t("/users/42/orders"), "/users/{id}/orders");
        assert_eq!(
            t("/orders/550e8400-e29b-41d4-a716-446655440000"),
            "/orders/{id}"
        );
        assert_eq!(t("/blobs/deadbeef01"), "/blobs/{id}");
        assert_eq!(t("/blobs/DEADBEEF"), "/blobs/{id}");
        assert_eq!(t("/s/aB3dE5fG7hJ9kL1mN3pQ5r"), "/s/{id}");
        assert_eq!(t("/users/alice@example.com"), "/users/{id}");
        assert_eq!(t("/a/1/b/2"), "/a/{id}/b/{id}");
        // Not ids: words, short hex, versions, long words without digits, dates.
        assert_eq!(t("/api/v1/users"), "/api/v1/users");
        assert_eq!(t("/cafe/abc1"), "/cafe/abc1");
        assert_eq!(
            t("/docs/getting-started-with-the-api"),
            "/docs/getting-started-with-the-api"
        );
        assert_eq!(t("/"), "/");
        assert_eq!(t(""), "/");
        assert_eq!(t("*"), "*");
        assert_eq!(t("example.com:443"), "{target}");
        assert_eq!(t("/x/"), "/x/");
        assert_eq!(t(&format!("/f/{}", "a".repeat(65))), "/f/{id}");
        let long: String = (0..30).map(|i| format!("/s{i}")).collect();
        assert!(t(&long).ends_with("/{...}"));
        assert!(t(&format!("/{}", "x".repeat(60)).repeat(10)).len() <= MAX_TEMPLATE + 70);
    }

    /// Personal data in paths never reaches a template (and so never a label).
    #[test]
    fn hostile_paths_keep_no_personal_data() {
        let hostile = [
            ("/users/alice@example.com/orders", "alice"),
            ("/users/jsmith", "jsmith"),
            ("/users/john.doe/settings", "john"),
            ("/Users/Maria/photos", "Maria"),
            ("/accounts/bob_the_builder", "bob"),
            ("/api/v1/profile/alice-w/avatar", "alice"),
            ("/by-email/jane%40corp.io", "jane"),
            ("/lookup/jane.smith", "jane"),
            ("/lookup/jdoe42", "jdoe"),
            ("/call/+1-202-555-0143", "555"),
            ("/call/202-555-0143", "555"),
            ("/call/(202)%20555-0143", "555"),
            ("/call/%2B442071838750", "4420"),
            ("/search/J%C3%B3zef%20Nowak", "Nowak"),
            ("/search/Józef", "zef"),
            ("/files/caf%C3%A9", "caf"),
            ("/~alice/public", "alice"),
            ("/born/1990-04-12", "1990"),
            ("/cb/token=abc", "abc"),
            ("/n/o'brien", "brien"),
        ];
        for (path, secret) in hostile {
            let template = t(path);
            assert!(
                !template.contains(secret),
                "{path} gave {template}, which holds {secret:?}"
            );
            assert!(!template.contains('%'), "{path} gave {template}");
            assert!(!template.contains('@'), "{path} gave {template}");
        }
        // Structure is kept around the values.
        assert_eq!(t("/users/jsmith/orders"), "/users/{id}/orders");
        assert_eq!(t("/users/me/orders"), "/users/me/orders");
        assert_eq!(t("/api/v2beta1/items"), "/api/v2beta1/items");
        assert_eq!(t("/openapi.json"), "/openapi.json");
        assert_eq!(t("/.well-known/jwks.json"), "/.well-known/jwks.json");
        assert_eq!(t("/v1/projects/p:search"), "/v1/projects/p:search");
        assert_eq!(t("/oauth2/token"), "/oauth2/token");
        assert!(is_version("v1") && is_version("1.0") && is_version("v1.2.3"));
        assert!(!is_version("version") && !is_version("v1.x") && !is_version("1alpha"));
    }

    #[test]
    fn route_and_ids() {
        let path = "/users/7/orders/8";
        let r = RouteTemplate::of("get", path);
        let mut key = String::new();
        r.write_key(&mut key);
        assert_eq!(key, "GET /users/{id}/orders/{id}");
        assert_eq!(r.ids(path).collect::<Vec<_>>(), vec!["7", "8"]);
        assert!(r.has_ids());
        assert!(!RouteTemplate::of("GET", "/hello").has_ids());
        assert_eq!(method_label("PO ST"), "OTHER");
        assert_eq!(method_label(""), "OTHER");
        assert_eq!(method_label("FROB"), "OTHER");
        assert_eq!(method_label("patch"), "PATCH");
    }

    #[test]
    fn configured_patterns() {
        let p = RoutePatterns::new(&[
            "/users/{user_id}/orders".into(),
            "/files/{path...}".into(),
            "/shop/{slug}".into(),
        ])
        .unwrap();
        let path = "/users/jsmith/orders";
        let r = p.route("GET", path).unwrap();
        assert_eq!(r.path, "/users/{user_id}/orders");
        assert!(r.configured);
        assert_eq!(r.ids(path).collect::<Vec<_>>(), vec!["jsmith"]);
        let path = "/files/a/b/c.txt";
        let r = p.route("GET", path).unwrap();
        assert_eq!(r.path, "/files/{path...}");
        assert_eq!(r.ids(path).collect::<Vec<_>>(), vec!["a/b/c.txt"]);
        assert_eq!(
            p.route("GET", "/shop/red-shirt").unwrap().path,
            "/shop/{slug}"
        );
        assert!(p.route("GET", "/users/jsmith/orders/1").is_none());
        assert!(p.route("GET", "/users//orders").is_none());
        assert!(p.route("GET", "/files/").is_none());
        assert!(p.route("GET", "/shop").is_none());
        for bad in [
            "users/{id}",
            "/a/{}",
            "/a/x{id}",
            "/a/{p...}/b",
            "/a/j.doe",
            "/a/{i-d}",
        ] {
            let err = RoutePatterns::new(&[bad.into()]).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn grpc_routes_are_kept_verbatim() {
        let path = "/com.example.inventory.v1alpha2.InventoryService2/GetItem";
        let r = RouteTemplate::grpc("POST", path);
        assert_eq!(r.path, path);
        assert!(!r.has_ids());
        // the same path as plain HTTP would be templated
        assert_eq!(RouteTemplate::of("POST", path).path, "/{id}/GetItem");
        // anything that is not /Service/Method is templated as usual
        assert_eq!(RouteTemplate::grpc("POST", "/a/123/b").path, "/a/{id}/b");
        assert_eq!(
            RouteTemplate::grpc("POST", "/john.doe/Get").path,
            "/{id}/Get"
        );
        assert_eq!(
            RouteTemplate::grpc("POST", "/pkg.Svc/lowercase").path,
            "/{id}/lowercase"
        );
        assert_eq!(
            RouteTemplate::grpc("POST", "/Greeter/SayHello").path,
            "/Greeter/SayHello"
        );
    }
}
