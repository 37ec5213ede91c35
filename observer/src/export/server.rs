//! The agent's HTTP surfaces: the metrics port ([`router`]: `/metrics` and `/healthz`,
//! nothing with identity) and the control channel ([`control_router`]: the JSON API,
//! served on the Unix socket and optionally on a token-guarded TCP listener). See
//! [`super::surface`] for who may call what, and [`super::snapshot`] for what reads see.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{header, StatusCode},
    middleware::from_fn_with_state,
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use prometheus::{Encoder as _, Registry, TextEncoder};
use serde_json::json;
use tokio::sync::{watch, Notify};

use super::{
    audit::{Audit, AuditFingerprints},
    snapshot::Snapshot,
    surface::{self, Guard},
};
use crate::{
    capture::{tls::TargetStatus, ProbeStatus},
    identity::MAX_CREDENTIAL,
    score::HealthState,
    session::{freeze_diff, CredentialReport, FreezeError, FreezeMarks, ListQuery, SessionTable},
};

/// Largest request body on the control channel (a credential and a little slack).
pub const CONTROL_BODY_LIMIT: usize = MAX_CREDENTIAL + 1024;
/// Largest request body on the metrics port (it takes none).
pub const METRICS_BODY_LIMIT: usize = 1024;
/// How long a write waits for the snapshot that shows it.
const REPUBLISH_WAIT: Duration = Duration::from_secs(3);

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
    /// What API reads see; replaced whole by [`AppState::publish`].
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// Asks the publisher for a new snapshot (after a write).
    pub republish: Notify,
    /// The audit stream of the control channel.
    pub audit: Option<Arc<Audit>>,
    /// Fleet mode (`[fleet]`): the store shared by every node's agent.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// Access-log reconciliation (`[layers]`), when a log is configured.
    pub layers: Option<Arc<Mutex<crate::layers::Layers>>>,
    /// Downstream tallies (`[downstream]`), when downstream capture is on.
    pub downstream: Option<Arc<Mutex<crate::downstream::stats::DownstreamStats>>>,
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
            snapshot: watch::channel(Arc::new(Snapshot::default())).0,
            republish: Notify::new(),
            audit: None,
            fleet: None,
            layers: None,
            downstream: None,
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        // A panic while holding the lock cannot leave the table half-updated in a way
        // that matters to readers; keep serving.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace the snapshot with one of `table` (the caller holds the table's lock).
    pub fn publish(&self, table: &SessionTable) {
        let snapshot = Snapshot::of(table, std::time::SystemTime::now());
        self.snapshot.send_replace(Arc::new(snapshot));
    }

    /// The current snapshot (no lock on the table).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.borrow())
    }

    /// Fleet mode: share with the other nodes what a freeze or unfreeze changed here
    /// (`before`: the freezes before it). A store that cannot be reached is counted;
    /// the local freeze stands.
    async fn share_freezes(&self, before: FreezeMarks) {
        let Some(fleet) = &self.fleet else { return };
        let (after, epoch) = {
            let t = self.sessions();
            (t.freeze_marks(), t.key_generation())
        };
        let (added, removed) = freeze_diff(&before, &after);
        for (freeze, marks) in [(true, added), (false, removed)] {
            match fleet.share_freeze(freeze, epoch, &marks).await {
                Ok(()) => fleet.metrics.ok(),
                Err(e) => {
                    fleet.failed("freeze", &e);
                    tracing::warn!("freeze not shared with the fleet: {e}");
                }
            }
        }
    }

    /// The freezes held now (fleet mode only; nothing to diff otherwise).
    fn freeze_marks(&self) -> FreezeMarks {
        if self.fleet.is_none() {
            return FreezeMarks::default();
        }
        self.sessions().freeze_marks()
    }

    /// After a write: ask for a new snapshot and wait (bounded) until it is out, so that
    /// the caller's next read shows the write.
    async fn republish_and_wait(&self) {
        let mut rx = self.snapshot.subscribe();
        self.republish.notify_one();
        let _ = tokio::time::timeout(REPUBLISH_WAIT, rx.changed()).await;
    }
}

/// Publish a snapshot each time one is asked for (the agent's scoring loop does this
/// itself; this is for tests and tools that run the API alone).
pub async fn publisher(state: Arc<AppState>) {
    loop {
        state.republish.notified().await;
        let table = state.sessions();
        state.publish(&table);
    }
}

/// The metrics port: `/metrics` and `/healthz` only.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
        .layer(DefaultBodyLimit::max(METRICS_BODY_LIMIT))
        .layer(from_fn_with_state(
            (Guard::open(), None::<Arc<Audit>>),
            surface::guard,
        ))
}

/// The control channel: the JSON API, the endpoints that take a raw credential in the
/// request body, behind `guard` (who may call) and audited.
pub fn control_router(state: Arc<AppState>, guard: Arc<Guard>) -> Router {
    let audit = state.audit.clone();
    Router::new()
        .route("/api/sessions", get(list_sessions))
        .route("/api/sessions/{id}", get(get_session))
        .route("/api/fleet/sessions", get(fleet_sessions))
        .route("/api/findings", get(list_findings))
        .route("/api/layers", get(list_layers))
        .route("/api/downstream", get(list_downstream))
        .route("/api/frozen", get(list_frozen))
        .route("/api/frozen/{fingerprint}", put(freeze).delete(unfreeze))
        .route("/api/purge", post(purge))
        .route("/privacy", get(privacy))
        .route("/api/tls", get(tls_status))
        .route("/api/lookup", post(lookup_credential))
        .route("/api/freeze", post(freeze_credential))
        .route("/api/unfreeze", post(unfreeze_credential))
        .route("/healthz", get(healthz))
        .with_state(state)
        .layer(DefaultBodyLimit::max(CONTROL_BODY_LIMIT))
        .layer(from_fn_with_state((guard, audit), surface::guard))
}

/// Serve `app` on a listener, each request knowing its connection's [`surface::Peer`].
pub async fn serve<L>(listener: L, app: Router) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
    surface::Peer:
        for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<surface::Peer>(),
    )
    .await
}

/// The fingerprints a credential report matched (for the audit, never the credential).
fn with_fingerprints(report: &CredentialReport, mut response: Response) -> Response {
    let fps = report
        .matches
        .iter()
        .flat_map(|m| m.fingerprints.iter().map(|f| f.to_string()))
        .collect();
    response.extensions_mut().insert(AuditFingerprints(fps));
    response
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

/// `POST /api/lookup`: the sessions of a raw credential.
async fn lookup_credential(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let text = match credential_text(&body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let result = state.sessions().lookup_credential(text);
    match result {
        Ok(report) => with_fingerprints(&report, Json(&report).into_response()),
        Err(e) => freeze_error(e),
    }
}

/// `POST /api/freeze` (control socket only): freeze a raw credential, durably.
async fn freeze_credential(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let text = match credential_text(&body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let before = state.freeze_marks();
    let result = state.sessions().freeze_credential(text);
    match result {
        Ok(report) => {
            state.share_freezes(before).await;
            tracing::info!(
                kinds = report.matches.len(),
                changed = ?report.changed,
                "credential frozen over the control channel"
            );
            state.republish_and_wait().await;
            with_fingerprints(&report, Json(&report).into_response())
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
    let before = state.freeze_marks();
    let result = state.sessions().unfreeze_credential(text);
    match result {
        Ok(report) => {
            state.share_freezes(before).await;
            tracing::info!(changed = ?report.changed, "credential unfrozen over the control channel");
            state.republish_and_wait().await;
            with_fingerprints(&report, Json(&report).into_response())
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
    Json(state.snapshot().list(&query)).into_response()
}

/// `GET /api/sessions/{id}`: one session with its reasons and dimensions.
async fn get_session(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    // One session: bounded work under the lock (its maps are bounded).
    let detail = state.sessions().get(&id);
    match detail {
        Some(detail) => Json(detail).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no session {id}")),
    }
}

/// `GET /api/fleet/sessions?limit=N&state=S`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct FleetQuery {
    limit: Option<usize>,
    state: Option<HealthState>,
}

/// `GET /api/fleet/sessions`: the fleet's riskiest sessions (every node's entries
/// merged), from the store.
async fn fleet_sessions(
    State(state): State<Arc<AppState>>,
    query: Result<Query<FleetQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(fleet) = &state.fleet else {
        return error(
            StatusCode::NOT_FOUND,
            "fleet mode is off (set [fleet] endpoint)",
        );
    };
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let epoch = state.sessions().key_generation();
    let limit = query.limit.unwrap_or(crate::fleet::DEFAULT_LIST);
    match fleet.list(epoch, limit, query.state).await {
        Ok(sessions) => {
            fleet.metrics.ok();
            Json(json!({ "node": fleet.node, "up": true, "sessions": sessions })).into_response()
        }
        Err(e) => {
            fleet.failed("read", &e);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "node": fleet.node, "up": false, "error": e.to_string() })),
            )
                .into_response()
        }
    }
}

/// `GET /api/layers`: each access log followed, its lines read and skipped, and its last
/// reconciled windows (route templates and counts only).
async fn list_layers(State(state): State<Arc<AppState>>) -> Response {
    match &state.layers {
        Some(l) => Json(crate::layers::lock(l).status()).into_response(),
        None => Json(json!({ "access_logs": [] })).into_response(),
    }
}

/// `GET /api/downstream`: downstream calls since start: how many were attributed to a
/// request, per protocol, per route per request, and per statement fingerprint and
/// target (fingerprints only: never a literal).
async fn list_downstream(State(state): State<Arc<AppState>>) -> Response {
    match &state.downstream {
        Some(d) => Json(d.lock().unwrap_or_else(|e| e.into_inner()).json()).into_response(),
        None => Json(json!({ "enabled": false })).into_response(),
    }
}

/// `GET /api/findings`: facts about the APIs (credentials in plaintext or in query
/// strings), once per host and route.
async fn list_findings(State(state): State<Arc<AppState>>) -> Response {
    Json(&state.snapshot().findings).into_response()
}

async fn list_frozen(State(state): State<Arc<AppState>>) -> Response {
    Json(&state.snapshot().frozen).into_response()
}

/// `PUT /api/frozen/{fingerprint}`: any later use of it is an unhealthy signal.
async fn freeze(State(state): State<Arc<AppState>>, Path(fp): Path<String>) -> Response {
    let before = state.freeze_marks();
    let result = state.sessions().freeze(&fp);
    match result {
        Ok(changed) => {
            state.share_freezes(before).await;
            state.republish_and_wait().await;
            Json(json!({ "fingerprint": fp, "frozen": true, "changed": changed })).into_response()
        }
        Err(e) => freeze_error(e),
    }
}

/// `GET /privacy`: what is collected, at which precision, for how long, and how much
/// is held right now.
async fn privacy(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.snapshot();
    let mut value = serde_json::to_value(&snapshot.privacy).unwrap_or_default();
    if let Some(obj) = value.as_object_mut() {
        obj.insert("capture".into(), state.capture_privacy.clone());
        obj.insert(
            "reads_last_24h".into(),
            json!(state.audit.as_ref().map(|a| a.reads_last_24h())),
        );
    }
    Json(value).into_response()
}

/// `POST /api/purge`: forget every session now (the same as SIGUSR1).
async fn purge(State(state): State<Arc<AppState>>) -> Response {
    let purged = state.sessions().purge();
    tracing::info!("purge requested over the API: {purged} sessions forgotten");
    state.republish_and_wait().await;
    Json(json!({ "purged": purged })).into_response()
}

/// `DELETE /api/frozen/{fingerprint}`.
async fn unfreeze(State(state): State<Arc<AppState>>, Path(fp): Path<String>) -> Response {
    let before = state.freeze_marks();
    let result = state.sessions().unfreeze(&fp);
    match result {
        Ok(changed) => {
            state.share_freezes(before).await;
            state.republish_and_wait().await;
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
        let registry = Registry::new();
        let dir = std::env::temp_dir().join(format!("observer-server-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let audit_file = dir.join("audit.jsonl");
        let mut state = AppState::new(registry, Arc::new(Mutex::new(table)));
        state.audit = Some(Arc::new(
            Audit::new(Some(audit_file.to_str().unwrap()), &state.registry).unwrap(),
        ));
        let state = Arc::new(state);
        let sock = dir.join("control.sock");
        let (unix, _guard) = crate::export::control::bind(&sock).unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent = format!("http://{}", tcp.local_addr().unwrap());
        let app = control_router(
            Arc::clone(&state),
            Guard::control(surface::Access::Uids(vec![])),
        );
        tokio::spawn(serve(unix, app));
        let app = router(Arc::clone(&state));
        tokio::spawn(serve(tcp, app));
        tokio::spawn(publisher(Arc::clone(&state)));

        let out = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for path in [
                "/api/lookup",
                "/api/freeze",
                "/api/unfreeze",
                "/api/sessions",
                "/privacy",
                "/api/purge",
            ] {
                out.push((path, "tcp", request(&agent, "POST", path).unwrap()));
            }
            out.push((
                "/api/sessions",
                "tcp",
                request(&agent, "GET", "/api/sessions").unwrap(),
            ));
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
        let audit = std::fs::read_to_string(&audit_file).unwrap();
        assert!(!audit.contains("SRV-SECRET-1"), "{audit}");
        let lines: Vec<serde_json::Value> = audit
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 7, "{audit}");
        assert!(
            lines.iter().all(|l| l["who"]["uid"].as_u64().is_some()),
            "{audit}"
        );
        let freeze = lines.iter().find(|l| l["action"] == "freeze").unwrap();
        assert!(freeze["fingerprints"][0].as_str().is_some(), "{audit}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
