//! Request metrics: counts and latency of exchanges.

use std::{collections::HashMap, sync::Arc};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

use crate::{exchange::Exchange, http::ParseIssue, workload::Workload};

/// Most distinct route templates given their own label value; later ones are `other`.
const MAX_ROUTES: usize = 500;
/// Most label sets whose metrics are kept at hand (beyond it they are looked up anew).
const MAX_CHILDREN: usize = 4096;

/// Foldhash, seeded per map: cheap for the short keys hashed on every exchange.
type Fast = foldhash::fast::RandomState;

/// The labels of one exchange's metrics: its method, route label (by number), status
/// class, role and TLS, and its workload: 0 when it names no namespace or pod (empty
/// labels), else by address (the entry keeps that workload alive, so the address names
/// it for as long as the entry lives).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct LabelSet {
    method: &'static str,
    route: u32,
    class: &'static str,
    role: &'static str,
    tls: bool,
    workload: usize,
}

/// The metrics of one label set: the same ones `with_label_values` gives.
struct Children {
    requests: IntCounter,
    duration: Histogram,
    _workload: Option<Arc<Workload>>,
}

pub struct RequestMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub parse_issues: IntCounterVec,
    /// Route labels given so far, and their numbers.
    routes: HashMap<String, u32, Fast>,
    /// The metrics of the label sets seen lately: an exchange costs one lookup.
    children: HashMap<LabelSet, Children, Fast>,
}

impl RequestMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "api_observer_http_requests_total",
                "HTTP exchanges seen, by method, route template, status class, role of the traced process, TLS, and (in Kubernetes) namespace and pod of the traced process.",
            ),
            &["method", "route", "status_class", "role", "tls", "namespace", "pod"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "api_observer_http_request_duration_seconds",
                "Time from the end of the request head to the end of the response head.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["method", "status_class", "role"],
        )?;
        let parse_issues = IntCounterVec::new(
            Opts::new(
                "api_observer_http_parse_issues_total",
                "Bytes or messages the HTTP parsers could not use, by issue.",
            ),
            &["issue"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(parse_issues.clone()))?;
        // Every issue exists from the start so that rate() and dashboards work at once.
        for issue in ParseIssue::ALL {
            parse_issues.with_label_values(&[issue.as_str()]);
        }
        Ok(Self {
            requests,
            duration,
            parse_issues,
            routes: HashMap::default(),
            children: HashMap::default(),
        })
    }

    /// Route label: the exchange's path template (`/users/{id}`), bounded in number.
    #[cfg(test)]
    fn route<'a>(&mut self, template: &'a str) -> &'a str {
        self.route_label(template).1
    }

    /// The route label and its number (`u32::MAX` for `other`).
    fn route_label<'a>(&mut self, template: &'a str) -> (u32, &'a str) {
        if let Some(n) = self.routes.get(template) {
            return (*n, template);
        }
        if self.routes.len() >= MAX_ROUTES {
            return (u32::MAX, "other");
        }
        let n = self.routes.len() as u32;
        self.routes.insert(template.to_string(), n);
        (n, template)
    }

    pub fn observe(&mut self, ex: &Exchange) {
        let method = ex.route.method;
        let class = ex.status_class();
        let role = ex.role.as_str();
        let (route_id, route) = self.route_label(&ex.route.path);
        let named = ex.workload.namespace.is_some() || ex.workload.pod.is_some();
        let labels = LabelSet {
            method,
            route: route_id,
            class,
            role,
            tls: ex.tls,
            workload: if named {
                Arc::as_ptr(&ex.workload) as usize
            } else {
                0
            },
        };
        if self.children.len() >= MAX_CHILDREN && !self.children.contains_key(&labels) {
            self.children.clear();
        }
        let c = self.children.entry(labels).or_insert_with(|| Children {
            requests: self.requests.with_label_values(&[
                method,
                route,
                class,
                role,
                if ex.tls { "true" } else { "false" },
                ex.workload.namespace.as_deref().unwrap_or(""),
                ex.workload.pod.as_deref().unwrap_or(""),
            ]),
            duration: self.duration.with_label_values(&[method, class, role]),
            _workload: named.then(|| Arc::clone(&ex.workload)),
        });
        c.requests.inc();
        c.duration.observe(ex.latency.as_secs_f64());
    }

    pub fn issue(&self, issue: ParseIssue) {
        self.parse_issues.with_label_values(&[issue.as_str()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::session::testutil::ExchangeBuilder;

    /// The metrics kept at hand count what `with_label_values` would have.
    #[test]
    fn counts_by_labels() {
        let mut m = RequestMetrics::register(&Registry::new()).unwrap();
        let pod = Arc::new(Workload {
            namespace: Some("shop".into()),
            pod: Some("api-1".into()),
            ..Default::default()
        });
        let mut expected: BTreeMap<Vec<String>, u64> = BTreeMap::new();
        for i in 0..200u32 {
            let path = ["/a/1", "/b", "/c/2/d"][i as usize % 3];
            let mut ex = ExchangeBuilder::new()
                .path(path)
                .status([200, 404, 500][i as usize % 3 / 2 + i as usize % 2])
                .tls(i % 4 == 0)
                .build();
            if i % 5 == 0 {
                ex.workload = Arc::clone(&pod);
            }
            if i % 7 == 0 {
                // Another workload with the same names: the same labels.
                ex.workload = Arc::new((*pod).clone());
            }
            m.observe(&ex);
            let labels: Vec<String> = [
                ex.route.method,
                ex.route.path.as_str(),
                ex.status_class(),
                ex.role.as_str(),
                if ex.tls { "true" } else { "false" },
                ex.workload.namespace.as_deref().unwrap_or(""),
                ex.workload.pod.as_deref().unwrap_or(""),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            *expected.entry(labels).or_default() += 1;
        }
        assert!(expected.len() > 6);
        let mut by_class: BTreeMap<String, u64> = BTreeMap::new();
        for (labels, n) in &expected {
            let l: Vec<&str> = labels.iter().map(String::as_str).collect();
            assert_eq!(m.requests.with_label_values(&l).get(), *n, "{l:?}");
            *by_class.entry(labels[2].clone()).or_default() += n;
        }
        for (class, n) in by_class {
            let h = m.duration.with_label_values(&["GET", &class, "server"]);
            assert_eq!(h.get_sample_count(), n, "{class}");
        }
    }

    #[test]
    fn routes_are_bounded() {
        let mut m = RequestMetrics::register(&Registry::new()).unwrap();
        assert_eq!(m.route("/users/{id}/orders"), "/users/{id}/orders");
        for i in 0..MAX_ROUTES + 10 {
            m.route(&format!("/r{i}/x"));
        }
        assert_eq!(m.route("/brand/new"), "other");
        assert_eq!(m.route("/users/{id}/orders"), "/users/{id}/orders");
    }
}
