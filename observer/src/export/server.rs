//! The agent's HTTP endpoint: `/metrics`, `/healthz`, and the JSON API.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use prometheus::{Encoder as _, Registry, TextEncoder};

use crate::capture::ProbeStatus;

/// What the handlers share with the pipeline.
pub struct AppState {
    pub registry: Registry,
    pub ready: AtomicBool,
    pub probes: Mutex<Vec<ProbeStatus>>,
}

impl AppState {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            ready: AtomicBool::new(false),
            probes: Mutex::new(Vec::new()),
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut body = Vec::new();
    let families = state.registry.gather();
    match TextEncoder::new().encode(&families, &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(serde::Serialize)]
struct Health {
    status: &'static str,
    probes_attached: usize,
    probes_failed: Vec<ProbeStatus>,
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let probes = state.probes.lock().map(|p| p.clone()).unwrap_or_default();
    let ready = state.ready.load(Ordering::Relaxed);
    let health = Health {
        status: if ready { "ok" } else { "starting" },
        probes_attached: probes.iter().filter(|p| p.attached).count(),
        probes_failed: probes.into_iter().filter(|p| !p.attached).collect(),
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(health)).into_response()
}
