//! The Grafana dashboard (`deploy/grafana/observer-dashboard.json`) as the tests read it:
//! its template variables and the query of every panel.

use serde_json::Value;

/// The dashboard's JSON.
pub fn load() -> Value {
    let path = crate::workspace_root().join("deploy/grafana/observer-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// One query of a panel.
#[derive(Debug)]
pub struct Target {
    pub panel: String,
    pub expr: String,
}

/// Every panel's queries, in order (rows have none).
pub fn targets(dashboard: &Value) -> Vec<Target> {
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| Target {
                    panel: title.clone(),
                    expr: t["expr"].as_str().expect("a PromQL expr").to_string(),
                })
        })
        .collect()
}

/// A query variable: its name and `label_values(<selector>, <label>)` split.
#[derive(Debug)]
pub struct Variable {
    pub name: String,
    pub selector: String,
    pub label: String,
    pub raw: Value,
}

/// The dashboard's query variables (the data source variable left out).
pub fn variables(dashboard: &Value) -> Vec<Variable> {
    let list = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    list.iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let query = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .expect("a variable query");
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| panic!("not label_values(selector, label): {query}"));
            let (selector, label) = inner
                .rsplit_once(',')
                .unwrap_or_else(|| panic!("no label in {query}"));
            Variable {
                name: v["name"].as_str().expect("a name").to_string(),
                selector: selector.trim().to_string(),
                label: label.trim().to_string(),
                raw: v.clone(),
            }
        })
        .collect()
}

/// `text` with each `$name` replaced by its value (longest names first, so `$pod` never
/// eats the start of a longer name).
pub fn substitute(text: &str, values: &[(&str, &str)]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    sorted.iter().fold(text.to_string(), |t, (name, value)| {
        t.replace(&format!("${name}"), value)
    })
}

/// Metric name prefixes of the agent's own series and of its request histograms.
pub const METRIC_PREFIXES: &[&str] = &[
    "api_observer_",
    "http_server_request_",
    "http_client_request_",
    "process_",
];

/// Every metric name in a PromQL expression (or any text) with one of
/// [`METRIC_PREFIXES`], with the byte offset just after it.
pub fn metric_names(text: &str) -> Vec<(&str, usize)> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        match (ident(c), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                let word = &text[s..i];
                if METRIC_PREFIXES.iter().any(|p| word.starts_with(p)) {
                    found.push((word, i));
                }
                start = None;
            }
            _ => {}
        }
    }
    found
}
