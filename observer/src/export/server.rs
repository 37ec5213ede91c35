//! The agent's HTTP endpoint: `/metrics`, `/healthz`, and the JSON API.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use prometheus::{Encoder as _, Registry, TextEncoder};
use serde_json::json;

use crate::{
    capture::{tls::TargetStatus, ProbeStatus},
    identity::MAX_CREDENTIAL,
    session::{FreezeError, ListQuery, SessionTable},
};

/// Largest request body on the control socket (a credential and a little slack).
pub const CONTROL_BODY_LIMIT: usize = MAX_CREDENTIAL + 1024;

/// What the handlers share with the pipeline.
pub struct AppState {
    pub registry: Registry,
    pub ready: AtomicBool,
    pub probes: Mutex<Vec<ProbeStatus>>,
    /// What the TLS library probes are attached to.
    pub tls: Mutex<Vec<TargetStatus>>,
    pub sessions: Arc<Mutex<SessionTable>>,
    /// The agent's own part of `/privacy` (capture settings, off switch, outputs).
    pub capture_privacy: serde_json::Value,
}

impl AppState {
    pub fn new(registry: Registry, sessions: Arc<Mutex<SessionTable>>) -> Self {
        Self {
            registry,
            ready: AtomicBool::new(false),
            probes: Mutex::new(Vec::new()),
            tls: Mutex::new(Vec::new()),
            sessions,
            capture_privacy: serde_json::Value::Null,
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        // A panic while holding the lock cannot leave the table half-updated in a way
        // that matters to readers; keep serving.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/sessions", get(list_sessions))
        .route("/api/sessions/{id}", get(get_session))
        .route("/api/findings", get(list_findings))
        .route("/api/frozen", get(list_frozen))
        .route("/api/frozen/{fingerprint}", put(freeze).delete(unfreeze))
        .route("/api/purge", post(purge))
        .route("/privacy", get(privacy))
        .route("/api/tls", get(tls_status))
        .with_state(state)
}

/// The control socket's router: everything [`router`] serves, plus the endpoints that
/// take a raw credential in the request body. Never served on the TCP port.
pub fn control_router(state: Arc<AppState>) -> Router {
    let credential = Router::new()
        .route("/api/lookup", post(lookup_credential))
        .route("/api/freeze", post(freeze_credential))
        .route("/api/unfreeze", post(unfreeze_credential))
        .layer(DefaultBodyLimit::max(CONTROL_BODY_LIMIT))
        .with_state(Arc::clone(&state));
    router(state).merge(credential)
}

fn freeze_error(e: FreezeError) -> Response {
    let code = match e {
        FreezeError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    error(code, e)
}

type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

/// The credential in a request body (UTF-8 text, one line). The body is not logged.
fn credential_text(body: &Body) -> Result<&str, Box<Response>> {
    let body = body.as_ref().map_err(|r| {
        Box::new(if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            error(
                StatusCode::BAD_REQUEST,
                format!("credential longer than {MAX_CREDENTIAL} bytes"),
            )
        } else {
            error(StatusCode::BAD_REQUEST, r.body_text())
        })
    })?;
    std::str::from_utf8(body).map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "credential must be UTF-8 text",
        ))
    })
}

/// `POST /api/lookup` (control socket only): the sessions of a raw credential.
async fn lookup_credential(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let text = match credential_text(&body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    match state.sessions().lookup_credential(text) {
        Ok(report) => Json(report).into_response(),
        Err(e) => freeze_error(e),
    }
}

/// `POST /api/freeze` (control socket only): freeze a raw credential, durably.
async fn freeze_credential(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let text = match credential_text(&body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    match state.sessions().freeze_credential(text) {
        Ok(report) => {
            tracing::info!(
                kinds = report.matches.len(),
                changed = ?report.changed,
                "credential frozen over the control socket"
            );
            Json(report).into_response()
        }
        Err(e) => freeze_error(e),
    }
}

/// `POST /api/unfreeze` (control socket only).
async fn unfreeze_credential(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let text = match credential_text(&body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    match state.sessions().unfreeze_credential(text) {
        Ok(report) => {
            tracing::info!(changed = ?report.changed, "credential unfrozen over the control socket");
            Json(report).into_response()
        }
        Err(e) => freeze_error(e),
    }
}

fn error(code: StatusCode, message: impl std::fmt::Display) -> Response {
    (code, Json(json!({ "error": message.to_string() }))).into_response()
}

/// `GET /api/sessions?state=unhealthy&direction=inbound&limit=20`: riskiest first.
async fn list_sessions(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ListQuery>,
) -> Response {
    Json(state.sessions().list(&query)).into_response()
}

/// `GET /api/sessions/{id}`: one session with its reasons and dimensions.
async fn get_session(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.sessions().get(&id) {
        Some(detail) => Json(detail).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no session {id}")),
    }
}

/// `GET /api/findings`: facts about the APIs (credentials in plaintext or in query
/// strings), once per host and route.
async fn list_findings(State(state): State<Arc<AppState>>) -> Response {
    Json(state.sessions().findings().list()).into_response()
}

async fn list_frozen(State(state): State<Arc<AppState>>) -> Response {
    Json(state.sessions().frozen()).into_response()
}

/// `PUT /api/frozen/{fingerprint}`: any later use of it is an unhealthy signal.
async fn freeze(State(state): State<Arc<AppState>>, Path(fp): Path<String>) -> Response {
    match state.sessions().freeze(&fp) {
        Ok(changed) => {
            Json(json!({ "fingerprint": fp, "frozen": true, "changed": changed })).into_response()
        }
        Err(e) => freeze_error(e),
    }
}

/// `GET /privacy`: what is collected, at which precision, for how long, and how much
/// is held right now.
async fn privacy(State(state): State<Arc<AppState>>) -> Response {
    let report = state
        .sessions()
        .privacy_report(std::time::SystemTime::now());
    let mut value = serde_json::to_value(report).unwrap_or_default();
    if let Some(obj) = value.as_object_mut() {
        obj.insert("capture".into(), state.capture_privacy.clone());
    }
    Json(value).into_response()
}

/// `POST /api/purge`: forget every session now (the same as SIGUSR1).
async fn purge(State(state): State<Arc<AppState>>) -> Response {
    let purged = state.sessions().purge();
    tracing::info!("purge requested over the API: {purged} sessions forgotten");
    Json(json!({ "purged": purged })).into_response()
}

/// `DELETE /api/frozen/{fingerprint}`.
async fn unfreeze(State(state): State<Arc<AppState>>, Path(fp): Path<String>) -> Response {
    match state.sessions().unfreeze(&fp) {
        Ok(changed) => {
            Json(json!({ "fingerprint": fp, "frozen": false, "changed": changed })).into_response()
        }
        Err(e) => freeze_error(e),
    }
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

/// What the TLS probes are attached to: library, path, functions, processes, errors.
async fn tls_status(State(state): State<Arc<AppState>>) -> Json<Vec<TargetStatus>> {
    Json(state.tls.lock().map(|t| t.clone()).unwrap_or_default())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cli::client::{request, request_unix},
        identity::FingerprintKey,
        session::SessionTableConfig,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn credential_endpoints_only_on_the_control_socket() {
        let table = SessionTable::new(
            SessionTableConfig::default(),
            FingerprintKey::random().unwrap(),
        );
        let state = Arc::new(AppState::new(Registry::new(), Arc::new(Mutex::new(table))));
        let dir = std::env::temp_dir().join(format!("observer-server-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sock = dir.join("control.sock");
        let (unix, _guard) = crate::export::control::bind(&sock).unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent = format!("http://{}", tcp.local_addr().unwrap());
        let app = control_router(Arc::clone(&state));
        tokio::spawn(async move { axum::serve(unix, app).await });
        let app = router(Arc::clone(&state));
        tokio::spawn(async move { axum::serve(tcp, app).await });

        let out = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for path in ["/api/lookup", "/api/freeze", "/api/unfreeze"] {
                out.push((path, "tcp", request(&agent, "POST", path).unwrap()));
            }
            let big = vec![b'x'; MAX_CREDENTIAL + 10];
            let huge = vec![b'x'; CONTROL_BODY_LIMIT + 100];
            for (name, body) in [
                ("empty", &b""[..]),
                ("blank", &b" \n"[..]),
                ("big", &big[..]),
                ("huge", &huge[..]),
                ("lookup", &b"Bearer SRV-SECRET-1\n"[..]),
            ] {
                out.push((
                    "/api/lookup",
                    name,
                    request_unix(&sock, "POST", "/api/lookup", body).unwrap(),
                ));
            }
            out.push((
                "/api/freeze",
                "freeze",
                request_unix(&sock, "POST", "/api/freeze", b"SRV-SECRET-1").unwrap(),
            ));
            out.push((
                "/api/frozen",
                "list",
                request_unix(&sock, "GET", "/api/frozen", b"").unwrap(),
            ));
            out
        })
        .await
        .unwrap();
        for (path, how, (code, body)) in &out {
            match *how {
                "tcp" => assert_eq!(*code, 404, "{path} on TCP: {body}"),
                "empty" | "blank" => {
                    assert_eq!(*code, 400, "{how}: {body}");
                    assert!(body.contains("empty credential"), "{body}");
                }
                "big" | "huge" => {
                    assert_eq!(*code, 400, "{how}: {body}");
                    assert!(body.contains("longer than"), "{body}");
                }
                _ => assert_eq!(*code, 200, "{how}: {body}"),
            }
            assert!(!body.contains("SRV-SECRET-1"), "{how}: {body}");
        }
        let list: serde_json::Value = serde_json::from_str(&out.last().unwrap().2 .1).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
        assert!(list[0]["id"].as_str().unwrap().starts_with("frz_"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
