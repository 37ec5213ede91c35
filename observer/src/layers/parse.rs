//! One access-log line into what reconciliation keeps: a route template, a status and a
//! time. The raw line (its path, query string, addresses, user agent) is dropped here.

use super::{JsonFields, LogFormat};
use crate::route::{RoutePatterns, RouteTemplate};

/// Longest line read; longer ones are skipped (`too_long`).
pub const MAX_LINE: usize = 16 * 1024;

/// What is kept of one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// `GET /users/{id}`: method and route template, never the raw path.
    pub route: String,
    pub status: u16,
    /// Unix time, seconds.
    pub time: u64,
}

/// Why a line was skipped (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    TooLong,
    NotUtf8,
    /// No `"METHOD target HTTP/x"` request, or a target that is not a path.
    Request,
    Status,
    Time,
    /// Not a JSON object.
    Json,
    /// A configured JSON field is absent or of the wrong type.
    Field,
    /// Older than the agent's start, or in a window already reconciled.
    Late,
    /// The log tally is full.
    Full,
}

impl Skip {
    pub const ALL: [Skip; 9] = [
        Skip::TooLong,
        Skip::NotUtf8,
        Skip::Request,
        Skip::Status,
        Skip::Time,
        Skip::Json,
        Skip::Field,
        Skip::Late,
        Skip::Full,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Skip::TooLong => "too_long",
            Skip::NotUtf8 => "not_utf8",
            Skip::Request => "request",
            Skip::Status => "status",
            Skip::Time => "time",
            Skip::Json => "json",
            Skip::Field => "field",
            Skip::Late => "late",
            Skip::Full => "full",
        }
    }
}

/// Parse one line (without its newline).
pub fn parse_line(
    format: LogFormat,
    fields: &JsonFields,
    routes: &RoutePatterns,
    line: &[u8],
) -> Result<LogEntry, Skip> {
    if line.len() > MAX_LINE {
        return Err(Skip::TooLong);
    }
    let text = std::str::from_utf8(line).map_err(|_| Skip::NotUtf8)?;
    match format {
        LogFormat::Combined => {
            let (method, target, status, time) = combined(text)?;
            entry(routes, method, target, status, time)
        }
        LogFormat::Json => {
            let (method, target, status, time) = json(text, fields)?;
            entry(routes, &method, &target, status, time)
        }
    }
}

fn entry(
    routes: &RoutePatterns,
    method: &str,
    target: &str,
    status: u16,
    time: u64,
) -> Result<LogEntry, Skip> {
    let path = path_of(target).ok_or(Skip::Request)?;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(Skip::Request);
    }
    let route = routes
        .route(method, path)
        .unwrap_or_else(|| RouteTemplate::of(method, path));
    Ok(LogEntry {
        route: route_key(&route),
        status,
        time,
    })
}

/// `GET /users/{id}`.
pub fn route_key(route: &RouteTemplate) -> String {
    let mut s = String::with_capacity(route.path.len() + 8);
    route.write_key(&mut s);
    s
}

/// The path of a request target, without query or fragment (`http://h/p?q` too).
fn path_of(target: &str) -> Option<&str> {
    let target = match target.find("://") {
        Some(i) if !target.starts_with('/') => {
            let rest = &target[i + 3..];
            rest.find('/').map(|j| &rest[j..]).unwrap_or("/")
        }
        _ => target,
    };
    if !target.starts_with('/') {
        return None;
    }
    let end = target.find(['?', '#']).unwrap_or(target.len());
    Some(&target[..end])
}

/// nginx/Apache combined: `addr - user [10/Oct/2000:13:55:36 -0700] "GET /p HTTP/1.1" 200 ...`.
fn combined(text: &str) -> Result<(&str, &str, u16, u64), Skip> {
    let open = text.find('[').ok_or(Skip::Time)?;
    let close = open + text[open..].find(']').ok_or(Skip::Time)?;
    let time = clf_time(&text[open + 1..close]).ok_or(Skip::Time)?;
    let rest = &text[close + 1..];
    let q1 = rest.find('"').ok_or(Skip::Request)?;
    let rest = &rest[q1 + 1..];
    // nginx writes a `"` inside the request as \x22, so the next quote ends it.
    let q2 = rest.find('"').ok_or(Skip::Request)?;
    let request = &rest[..q2];
    let mut parts = request.split(' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().ok_or(Skip::Request)?;
    let status = rest[q2 + 1..]
        .split_whitespace()
        .next()
        .and_then(parse_status)
        .ok_or(Skip::Status)?;
    Ok((method, target, status, time))
}

fn parse_status(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|s| (100..=999).contains(s))
}

/// JSON, e.g. nginx `log_format j escape=json '{"time":"$time_iso8601",...}'`.
fn json(text: &str, f: &JsonFields) -> Result<(String, String, u16, u64), Skip> {
    let mut v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|_| Skip::Json)?;
    let mut take = |k: &str| match v.remove(k) {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    };
    let method = take(&f.method).ok_or(Skip::Field)?;
    let uri = take(&f.uri).ok_or(Skip::Field)?;
    let status = match v.get(&f.status) {
        Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|n| parse_status(&n.to_string())),
        Some(serde_json::Value::String(s)) => parse_status(s),
        None => return Err(Skip::Field),
        _ => None,
    }
    .ok_or(Skip::Status)?;
    let time = match v.get(&f.time) {
        Some(serde_json::Value::Number(n)) => n.as_f64().filter(|t| *t >= 0.0).map(|t| t as u64),
        Some(serde_json::Value::String(s)) => iso_time(s).or_else(|| clf_time(s)).or_else(|| {
            s.parse::<f64>()
                .ok()
                .filter(|t| *t >= 0.0)
                .map(|t| t as u64)
        }),
        None => return Err(Skip::Field),
        _ => None,
    }
    .ok_or(Skip::Time)?;
    Ok((method, uri, status, time))
}

/// `10/Oct/2000:13:55:36 -0700`.
fn clf_time(s: &str) -> Option<u64> {
    let (dt, zone) = s.split_once(' ').unwrap_or((s, "+0000"));
    let mut it = dt.splitn(4, [':', '/']);
    let day: u32 = it.next()?.parse().ok()?;
    let mon = month(it.next()?)?;
    let year: i64 = it.next()?.parse().ok()?;
    let (h, m, sec) = hms(it.next()?)?;
    let off = zone_offset(zone)?;
    epoch(year, mon, day, h, m, sec, off)
}

/// `2000-10-10T13:55:36+00:00` (or `Z`, fractional seconds allowed).
fn iso_time(s: &str) -> Option<u64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let mon: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let zi = rest.find(['+', '-', 'Z'])?;
    let (clock, zone) = rest.split_at(zi);
    let clock = clock.split('.').next()?;
    let (h, m, sec) = hms(clock)?;
    let off = if zone == "Z" {
        0
    } else {
        zone_offset(&zone.replace(':', ""))?
    };
    epoch(year, mon, day, h, m, sec, off)
}

fn hms(s: &str) -> Option<(u32, u32, u32)> {
    let mut it = s.splitn(3, ':');
    let h = it.next()?.parse().ok()?;
    let m = it.next()?.parse().ok()?;
    let sec = it.next()?.parse().ok()?;
    (h < 24 && m < 60 && sec < 61).then_some((h, m, sec))
}

fn month(s: &str) -> Option<u32> {
    const M: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    M.iter().position(|m| *m == s).map(|i| i as u32 + 1)
}

/// `+0200` → seconds east of UTC.
fn zone_offset(z: &str) -> Option<i64> {
    let (sign, digits) = match z.as_bytes().first()? {
        b'+' => (1, &z[1..]),
        b'-' => (-1, &z[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: i64 = digits[..2].parse().ok()?;
    let m: i64 = digits[2..].parse().ok()?;
    Some(sign * (h * 3600 + m * 60))
}

/// Unix seconds of a civil date and time at `offset` seconds east of UTC.
fn epoch(year: i64, mon: u32, day: u32, h: u32, m: u32, s: u32, offset: i64) -> Option<u64> {
    if !(1..=12).contains(&mon) || !(1..=31).contains(&day) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if mon <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mon as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let t = days * 86400 + (h as i64) * 3600 + (m as i64) * 60 + s as i64 - offset;
    u64::try_from(t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn combined_line(line: &str) -> Result<LogEntry, Skip> {
        parse_line(
            LogFormat::Combined,
            &JsonFields::default(),
            &RoutePatterns::default(),
            line.as_bytes(),
        )
    }

    fn json_line(line: &str) -> Result<LogEntry, Skip> {
        parse_line(
            LogFormat::Json,
            &JsonFields::default(),
            &RoutePatterns::default(),
            line.as_bytes(),
        )
    }

    #[test]
    fn combined_lines_keep_route_status_and_time_only() {
        let e = combined_line(
            r#"10.0.0.1 - bob [10/Oct/2000:13:55:36 -0700] "GET /users/12345/orders?api_key=SECRET&x=1 HTTP/1.1" 200 2326 "http://ref/?q=SECRET" "curl/8""#,
        )
        .unwrap();
        assert_eq!(
            e,
            LogEntry {
                route: "GET /users/{id}/orders".into(),
                status: 200,
                time: 971211336,
            }
        );
        assert!(!format!("{e:?}").contains("SECRET"));
        let e = combined_line(
            r#"::1 - - [26/Nov/2026:09:50:23 +0000] "POST http://h:8080/login?token=SECRET HTTP/1.1" 401 0 "-" "-""#,
        )
        .unwrap();
        assert_eq!(e.route, "POST /login");
        assert_eq!(e.status, 401);
        assert_eq!(e.time, 1795686623);
    }

    #[test]
    fn malformed_combined_lines_are_skipped_by_reason() {
        assert_eq!(combined_line("garbage"), Err(Skip::Time));
        assert_eq!(
            combined_line(r#"1.2.3.4 - - [99/Foo/2000:13:55:36 +0000] "GET / HTTP/1.1" 200 1"#),
            Err(Skip::Time)
        );
        // nginx logs a request line it could not parse as it came, or "-".
        assert_eq!(
            combined_line(r#"1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] "-" 400 0 "-" "-""#),
            Err(Skip::Request)
        );
        assert_eq!(
            combined_line(
                r#"1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] "\x16\x03\x01 x" 400 0 "-" "-""#
            ),
            Err(Skip::Request)
        );
        assert_eq!(
            combined_line(r#"1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" abc 1"#),
            Err(Skip::Status)
        );
        assert_eq!(
            parse_line(
                LogFormat::Combined,
                &JsonFields::default(),
                &RoutePatterns::default(),
                b"\xff\xfe [x]"
            ),
            Err(Skip::NotUtf8)
        );
        let long = format!(
            r#"1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] "GET /{} HTTP/1.1" 200 1"#,
            "a".repeat(MAX_LINE)
        );
        assert_eq!(combined_line(&long), Err(Skip::TooLong));
    }

    #[test]
    fn json_lines_in_the_nginx_escape_json_shape() {
        let e = json_line(
            r#"{"time":"2000-10-10T13:55:36-07:00","method":"DELETE","uri":"/items/42?token=SECRET","status":204,"ua":"x"}"#,
        )
        .unwrap();
        assert_eq!(
            e,
            LogEntry {
                route: "DELETE /items/{id}".into(),
                status: 204,
                time: 971211336,
            }
        );
        let e =
            json_line(r#"{"time":971211336.5,"method":"GET","uri":"/a","status":"503"}"#).unwrap();
        assert_eq!(
            (e.route.as_str(), e.status, e.time),
            ("GET /a", 503, 971211336)
        );
        assert_eq!(json_line("{not json"), Err(Skip::Json));
        assert_eq!(json_line(r#"[1,2]"#), Err(Skip::Json));
        assert_eq!(
            json_line(r#"{"time":"2000-10-10T13:55:36Z","uri":"/a","status":200}"#),
            Err(Skip::Field)
        );
        assert_eq!(
            json_line(r#"{"time":"yesterday","method":"GET","uri":"/a","status":200}"#),
            Err(Skip::Time)
        );
        assert_eq!(
            json_line(r#"{"time":"2000-10-10T13:55:36Z","method":"GET","uri":"/a","status":true}"#),
            Err(Skip::Status)
        );
        assert_eq!(
            json_line(r#"{"time":"2000-10-10T13:55:36Z","method":"GET","uri":"a?b","status":200}"#),
            Err(Skip::Request)
        );
    }

    #[test]
    fn json_field_names_are_configurable() {
        let f = JsonFields {
            method: "m".into(),
            uri: "p".into(),
            status: "s".into(),
            time: "t".into(),
        };
        let e = parse_line(
            LogFormat::Json,
            &f,
            &RoutePatterns::default(),
            br#"{"t":"2000-10-10T20:55:36Z","m":"GET","p":"/x/9?k=SECRET","s":200}"#,
        )
        .unwrap();
        assert_eq!((e.route.as_str(), e.time), ("GET /x/{id}", 971211336));
    }
}
