//! Request metrics: counts and latency of exchanges.

use std::collections::HashSet;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::{exchange::Exchange, http::ParseIssue};

/// Most distinct route templates given their own label value; later ones are `other`.
const MAX_ROUTES: usize = 500;

pub struct RequestMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub parse_issues: IntCounterVec,
    routes: HashSet<String>,
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
            routes: HashSet::new(),
        })
    }

    /// Route label: the exchange's path template (`/users/{id}`), bounded in number.
    fn route<'a>(&mut self, template: &'a str) -> &'a str {
        if self.routes.contains(template) {
            return template;
        }
        if self.routes.len() >= MAX_ROUTES {
            return "other";
        }
        self.routes.insert(template.to_string());
        template
    }

    pub fn observe(&mut self, ex: &Exchange) {
        let method = ex.route.method;
        let class = ex.status_class();
        let role = ex.role.as_str();
        let route = self.route(&ex.route.path);
        self.requests
            .with_label_values(&[
                method,
                route,
                class,
                role,
                if ex.tls { "true" } else { "false" },
                ex.workload.namespace.as_deref().unwrap_or(""),
                ex.workload.pod.as_deref().unwrap_or(""),
            ])
            .inc();
        self.duration
            .with_label_values(&[method, class, role])
            .observe(ex.latency.as_secs_f64());
    }

    pub fn issue(&self, issue: ParseIssue) {
        self.parse_issues.with_label_values(&[issue.as_str()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
