//! `observer sessions` (the session table of a running agent), `observer freeze` /
//! `observer unfreeze`, `lookup`, `privacy` and `findings`, over the control channel.

use anyhow::{bail, Context as _};
use serde_json::Value;

use super::client::Target;

/// GET `path` with `query`; any answer but 200 is an error. With `json` the body is
/// printed as it is and `None` returned; else the body, to be rendered.
fn fetch(agent: &Target, path: &str, query: &str, json: bool) -> anyhow::Result<Option<String>> {
    let path = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let (status, body) = agent.request("GET", &path, b"")?;
    if status != 200 {
        bail!("the agent answered {status}: {body}");
    }
    if json {
        println!("{body}");
        return Ok(None);
    }
    Ok(Some(body))
}

/// Fetch and print the session table.
pub fn list(agent: &Target, query: &str, json: bool) -> anyhow::Result<()> {
    let Some(body) = fetch(agent, "/api/sessions", query, json)? else {
        return Ok(());
    };
    let sessions: Vec<Value> = serde_json::from_str(&body).context("decoding the session list")?;
    print!("{}", render_table(&sessions));
    Ok(())
}

/// Print the agent's privacy report (pretty JSON).
pub fn privacy(agent: &Target) -> anyhow::Result<()> {
    print_json(agent, "/privacy")
}

/// Print the agent's findings (pretty JSON).
pub fn findings(agent: &Target) -> anyhow::Result<()> {
    print_json(agent, "/api/findings")
}

fn print_json(agent: &Target, path: &str) -> anyhow::Result<()> {
    let (status, body) = agent.request("GET", path, b"")?;
    if status != 200 {
        bail!("the agent answered {status}: {body}");
    }
    let value: Value = serde_json::from_str(&body).context("decoding the agent's answer")?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

/// Freeze (or unfreeze) a fingerprint.
pub fn freeze(agent: &Target, fingerprint: &str, frozen: bool) -> anyhow::Result<()> {
    let method = if frozen { "PUT" } else { "DELETE" };
    let (status, body) = agent.request(method, &format!("/api/frozen/{fingerprint}"), b"")?;
    if status != 200 {
        bail!("the agent answered {status}: {body}");
    }
    println!("{body}");
    Ok(())
}

/// What to do with a credential read from stdin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialAction {
    Lookup,
    Freeze,
    Unfreeze,
}

impl CredentialAction {
    fn path(self) -> &'static str {
        match self {
            Self::Lookup => "/api/lookup",
            Self::Freeze => "/api/freeze",
            Self::Unfreeze => "/api/unfreeze",
        }
    }
}

/// The credential is only ever read from stdin (`--credential -`): on the command line it
/// would be in the shell history and in `ps`.
pub fn check_credential_arg(arg: &str) -> anyhow::Result<()> {
    if arg != "-" {
        bail!("pass the credential on stdin, with --credential - (never on the command line)");
    }
    Ok(())
}

/// The first line of `input`, without its line end. Refuses an empty one.
pub fn read_credential(mut input: impl std::io::BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("reading the credential from stdin")?;
    let trimmed = line.trim_end_matches(['\n', '\r']);
    if trimmed.trim().is_empty() {
        bail!("no credential on stdin (expected one line)");
    }
    let out = trimmed.to_string();
    // Best effort: the line buffer held the credential.
    line.clear();
    line.shrink_to_fit();
    Ok(out)
}

/// Look up, freeze or unfreeze a credential (read from stdin) over the control channel.
pub fn credential(agent: &Target, action: CredentialAction, json: bool) -> anyhow::Result<()> {
    let mut credential = read_credential(std::io::stdin().lock())?.into_bytes();
    if credential.len() > crate::identity::MAX_CREDENTIAL {
        credential.fill(0);
        bail!(
            "credential longer than {} bytes",
            crate::identity::MAX_CREDENTIAL
        );
    }
    let result = agent.request("POST", action.path(), &credential);
    credential.fill(0);
    let (status, body) = result?;
    if status != 200 {
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or(body);
        bail!("the agent answered {status}: {message}");
    }
    if json {
        println!("{body}");
        return Ok(());
    }
    let report: Value = serde_json::from_str(&body).context("decoding the agent's answer")?;
    print!("{}", render_credential(&report));
    Ok(())
}

/// The text printed for a credential lookup / freeze.
pub fn render_credential(report: &Value) -> String {
    let mut out = String::new();
    if let Some(changed) = report["changed"].as_bool() {
        out.push_str(if changed { "changed\n" } else { "unchanged\n" });
    }
    let empty = Vec::new();
    let matches = report["matches"].as_array().unwrap_or(&empty);
    let mut sessions = Vec::new();
    for m in matches {
        let fps: Vec<&str> = m["fingerprints"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "as {}: {} {}{}\n",
            m["kind"].as_str().unwrap_or("-"),
            fps.join(" "),
            m["freeze_id"].as_str().unwrap_or("-"),
            if m["frozen"].as_bool() == Some(true) {
                " (frozen)"
            } else {
                ""
            }
        ));
        sessions.extend(m["sessions"].as_array().into_iter().flatten().cloned());
    }
    if sessions.is_empty() {
        out.push_str("(no live session uses this credential)\n");
    } else {
        out.push_str(&render_table(&sessions));
    }
    out
}

#[cfg(test)]
mod credential_tests {
    use super::*;

    #[test]
    fn credential_from_stdin() {
        assert_eq!(
            read_credential(&b"Bearer abc\r\nmore\n"[..]).unwrap(),
            "Bearer abc"
        );
        assert!(read_credential(&b"\n"[..]).is_err());
        assert!(read_credential(&b""[..]).is_err());
        assert!(check_credential_arg("-").is_ok());
        let e = check_credential_arg("my-token").unwrap_err().to_string();
        assert!(!e.contains("my-token"), "{e}");
    }
}

/// `pro 45%` (use against the tier's tightest limit), `pro` when unlimited, `-` without
/// a tier; `!` marks a consumer over its tier.
fn tier_use(c: &Value) -> String {
    let Some(tier) = c["tier"].as_str() else {
        return "-".into();
    };
    let ratio = c["rate_ratio"]
        .as_f64()
        .into_iter()
        .chain(c["quota_ratio"].as_f64())
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
    let over = if c["over"].as_bool() == Some(true) {
        "!"
    } else {
        ""
    };
    match ratio {
        Some(r) => format!("{tier} {:.0}%{over}", r * 100.0),
        None => tier.to_string(),
    }
}

/// The table printed by `observer sessions`.
pub fn render_table(sessions: &[Value]) -> String {
    let header = [
        "SESSION", "DIR", "KIND", "STATE", "SCORE", "REQS", "RATE/S", "NETS", "AGENTS", "TIER",
        "REASONS",
    ];
    let rows: Vec<[String; 11]> = sessions
        .iter()
        .map(|s| {
            let text = |k: &str| s[k].as_str().unwrap_or("-").to_string();
            let num = |k: &str| {
                s[k].as_u64()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into())
            };
            let reasons: Vec<&str> = s["reasons"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut state = text("state");
            if s["frozen"].as_bool() == Some(true) {
                state.push_str(" (frozen)");
            }
            [
                text("id"),
                text("direction"),
                text("kind"),
                state,
                num("score"),
                num("requests"),
                s["rate"]
                    .as_f64()
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_else(|| "-".into()),
                num("networks"),
                num("agents"),
                tier_use(&s["consumption"]),
                if reasons.is_empty() {
                    "-".into()
                } else {
                    reasons.join(",")
                },
            ]
        })
        .collect();
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    layout(&header, &rows, "(no sessions)")
}

/// Columns padded to their widest cell (the last one not padded).
fn layout(header: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: &[&str], out: &mut String| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  ", w = *w));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header, &mut out);
    for row in rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells, &mut out);
    }
    if rows.is_empty() {
        out.push_str(empty);
        out.push('\n');
    }
    out
}

/// Fetch and print the fleet-wide session list (`observer sessions --fleet`).
pub fn list_fleet(agent: &Target, query: &str, json: bool) -> anyhow::Result<()> {
    let Some(body) = fetch(agent, "/api/fleet/sessions", query, json)? else {
        return Ok(());
    };
    let list: Value = serde_json::from_str(&body).context("decoding the fleet list")?;
    print!("{}", render_fleet_table(&list));
    Ok(())
}

/// The fleet list as a table: nodes, networks, score, state, reasons.
pub fn render_fleet_table(list: &Value) -> String {
    let header = [
        "SESSION", "DIR", "KIND", "STATE", "SCORE", "REQS", "NODES", "NETWORKS", "REASONS",
    ];
    let join = |v: &Value| {
        let items: Vec<&str> = v
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(",")
        }
    };
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = list["sessions"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|s| {
            let text = |k: &str| s[k].as_str().unwrap_or("-").to_string();
            let num = |k: &str| {
                s[k].as_u64()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into())
            };
            vec![
                text("session"),
                text("direction"),
                text("kind"),
                text("state"),
                num("score"),
                num("requests"),
                join(&s["nodes"]),
                join(&s["networks"]),
                join(&s["reasons"]),
            ]
        })
        .collect();
    let mut out = format!(
        "fleet view from node {} (store {})\n",
        list["node"].as_str().unwrap_or("?"),
        if list["up"].as_bool() == Some(true) {
            "up"
        } else {
            "down"
        }
    );
    out.push_str(&layout(&header, &rows, "(no fleet sessions)"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_snapshot() {
        let sessions: Vec<Value> = serde_json::from_str(
            r#"[
              {"id":"tok_5f2c9a1e0b7d","direction":"inbound","kind":"bearer","state":"unhealthy",
               "score":15,"requests":120,"rate":2.5,"networks":3,"agents":1,"frozen":false,
               "reasons":["multi_network","expired_jwt_accepted"]},
              {"id":"anon_0011aabbccdd","direction":"inbound","kind":"anonymous","state":"healthy",
               "score":100,"requests":4,"rate":0.1,"networks":1,"agents":1,"frozen":true,"reasons":[]},
              {"id":"key_00aa11bb22cc","direction":"inbound","kind":"api_key","state":"suspicious",
               "score":75,"requests":900,"rate":12.0,"networks":1,"agents":1,"frozen":false,
               "reasons":["over_tier"],"consumption":{"tier":"free","rate_ratio":1.2,
               "quota_ratio":0.09,"over":true}}
            ]"#,
        )
        .unwrap();
        let expected = "\
SESSION            DIR      KIND       STATE             SCORE  REQS  RATE/S  NETS  AGENTS  TIER        REASONS
tok_5f2c9a1e0b7d   inbound  bearer     unhealthy         15     120   2.50    3     1       -           multi_network,expired_jwt_accepted
anon_0011aabbccdd  inbound  anonymous  healthy (frozen)  100    4     0.10    1     1       -           -
key_00aa11bb22cc   inbound  api_key    suspicious        75     900   12.00   1     1       free 120%!  over_tier
";
        assert_eq!(render_table(&sessions), expected);
        assert_eq!(render_table(&[]).lines().last(), Some("(no sessions)"));
    }

    #[test]
    fn fleet_table_snapshot() {
        let list: Value = serde_json::from_str(
            r#"{"node":"a","up":true,"sessions":[
              {"session":"tok_5f2c9a1e0b7d","direction":"inbound","kind":"bearer",
               "state":"unhealthy","score":40,"requests":12,"nodes":["a","b"],
               "networks":["10.1.1.0/24","10.2.2.0/24"],"reasons":["fleet_networks"]}]}"#,
        )
        .unwrap();
        let expected = "\
fleet view from node a (store up)
SESSION           DIR      KIND    STATE      SCORE  REQS  NODES  NETWORKS                 REASONS
tok_5f2c9a1e0b7d  inbound  bearer  unhealthy  40     12    a,b    10.1.1.0/24,10.2.2.0/24  fleet_networks
";
        assert_eq!(render_fleet_table(&list), expected);
    }
}
