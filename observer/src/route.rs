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
        }
    }

    /// The route of a gRPC call: `/package.Service/Method` verbatim (service and method
    /// names come from the API's definition, not from its data, and their dotted names
    /// would otherwise look like opaque ids). Any other path is templated as usual.
    pub fn grpc(method: &str, path: &str) -> Self {
        let ident = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        };
        match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
            Some((service, rpc)) if ident(service) && ident(rpc) => Self {
                method: method_label(method),
                path: path.to_string(),
                id_spans: Vec::new(),
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

/// Template a path: id segments become `{id}` and are handed to `ids` (so callers can count
/// distinct ids without storing the path). Long paths are cut to 12 segments / 200 bytes.
pub fn template_path<'a>(path: &'a str, ids: &mut Vec<&'a str>) -> String {
    template_with(path, |seg| ids.push(seg))
}

/// [`template_path`], handing each id segment to `id`.
fn template_with<'a>(path: &'a str, mut id: impl FnMut(&'a str)) -> String {
    if !path.starts_with('/') {
        let mut s: String = path.chars().take(32).collect();
        if s.is_empty() {
            s.push('/');
        }
        return s;
    }
    let mut out = String::with_capacity(path.len().min(MAX_TEMPLATE));
    for (n, seg) in path[1..].split('/').enumerate() {
        if n == MAX_SEGMENTS || out.len() > MAX_TEMPLATE {
            out.push_str("/{...}");
            break;
        }
        out.push('/');
        if is_id_segment(seg) {
            id(seg);
            out.push_str(ID);
        } else {
            let room = MAX_TEMPLATE.saturating_sub(out.len()).max(1);
            out.extend(seg.chars().take(room));
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
        assert_eq!(t("/cafe/abc123"), "/cafe/abc123");
        assert_eq!(
            t("/docs/getting-started-with-the-api"),
            "/docs/getting-started-with-the-api"
        );
        assert_eq!(t("/reports/2024-01-31"), "/reports/2024-01-31");
        assert_eq!(t("/"), "/");
        assert_eq!(t(""), "/");
        assert_eq!(t("*"), "*");
        assert_eq!(t("/x/"), "/x/");
        assert_eq!(t(&format!("/f/{}", "a".repeat(65))), "/f/{id}");
        let long: String = (0..30).map(|i| format!("/s{i}")).collect();
        assert!(t(&long).ends_with("/{...}"));
        assert!(t(&format!("/{}", "x".repeat(60)).repeat(10)).len() <= MAX_TEMPLATE + 70);
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
    fn grpc_routes_are_kept_verbatim() {
        let path = "/com.example.inventory.v1alpha2.InventoryService2/GetItem";
        let r = RouteTemplate::grpc("POST", path);
        assert_eq!(r.path, path);
        assert!(!r.has_ids());
        // the same path as plain HTTP would be templated
        assert_eq!(RouteTemplate::of("POST", path).path, "/{id}/GetItem");
        // anything that is not /Service/Method is templated as usual
        assert_eq!(RouteTemplate::grpc("POST", "/a/123/b").path, "/a/{id}/b");
    }
}
