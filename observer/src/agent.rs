//! `observer run`: load the probes, follow connections, parse, export. Stops cleanly on
//! SIGINT/SIGTERM (dropping the capture detaches every probe).

use std::{
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use prometheus::Registry;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    capture::{decode, metrics::CaptureMetrics, procfs, tls::TlsProbes, Capture},
    clock::Clock,
    config::Config,
    conn::{ConnOutput, ConnTable},
    export::{
        audit::Audit, control, jsonl::JsonLines, metrics::RequestMetrics, otlp::Otlp, server,
        surface, tls,
    },
    http::{HeaderAllowlist, ParserLimits},
    identity::FingerprintKey,
    session::{metrics::SessionMetrics, SessionTable, SessionTableConfig},
};

/// Connections silent for this long are forgotten (their close was not seen).
const IDLE_CONNECTION: Duration = Duration::from_secs(15 * 60);
/// How often the ring buffer is drained without a wakeup from the kernel.
const DRAIN_PERIOD: Duration = Duration::from_millis(10);
/// Most ring-buffer records handled before giving other work a turn.
const BATCH: usize = 4096;

/// Everything the pipeline does with one batch of kernel records.
struct Pipeline {
    conns: ConnTable,
    capture_metrics: CaptureMetrics,
    request_metrics: RequestMetrics,
    jsonl: Option<JsonLines>,
    /// Metrics and sampled spans to an OpenTelemetry Collector (`[otlp]`).
    otlp: Option<Otlp>,
    sessions: Arc<Mutex<SessionTable>>,
    privacy: crate::config::PrivacyFilter,
    /// Whether the exchange stream prints raw paths (`output.exchange_raw_paths`).
    raw_paths: bool,
    /// Configured route patterns (`[metrics] routes`).
    routes: crate::route::RoutePatterns,
    addresses: crate::exchange::AddressPolicy,
    ignored: prometheus::IntCounter,
    out: ConnOutput,
    /// Processes that called `exec` since the last drain (for the TLS attachment).
    execs: Vec<u32>,
    /// Access-log reconciliation (`[layers]`): server exchanges counted per window.
    layers: Option<Arc<Mutex<crate::layers::Layers>>>,
    /// Downstream calls (`[downstream]`): metrics and the tallies `/api/downstream` shows.
    downstream: Option<Downstream>,
}

/// Where downstream calls go once the connections have attributed them.
pub(crate) struct Downstream {
    pub metrics: crate::downstream::metrics::DownstreamMetrics,
    pub stats: Arc<Mutex<crate::downstream::stats::DownstreamStats>>,
}

impl Downstream {
    /// Count the calls and skips of `out`, and each server exchange's work per route.
    fn take(&mut self, out: &mut ConnOutput) {
        if out.downstream.is_empty() && out.downstream_skips.is_empty() && out.exchanges.is_empty()
        {
            return;
        }
        for (protocol, why) in out.downstream_skips.drain(..) {
            self.metrics.skip(protocol, why);
        }
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        for r in out.downstream.drain(..) {
            self.metrics.observe(&r);
            stats.record(&r);
        }
        for ex in &out.exchanges {
            if ex.role == crate::exchange::Role::Server {
                stats.request(ex.route.method, &ex.route.path, ex.downstream.as_deref());
            }
        }
    }
}

impl Pipeline {
    /// Handle up to `BATCH` records waiting in the ring buffer; returns how many. Their
    /// exchanges go to the sessions and exports once per batch, so the session table's
    /// lock is taken once per batch, not once per record: API readers holding it cannot
    /// starve the draining (and so fill the ring buffer).
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> usize {
        let mut n = 0;
        while n < BATCH {
            let Some(item) = ring.next() else { break };
            self.record(&item);
            n += 1;
        }
        self.flush();
        n
    }

    /// Tell the kernel to count long bodies ahead without copying them.
    fn order_skips(&mut self, capture: &mut crate::capture::Capture) {
        if self.out.skips.is_empty() {
            return;
        }
        if let Err(e) = capture.order_skips(&self.out.skips) {
            tracing::debug!("ordering body skips: {e:#}");
        }
        self.out.skips.clear();
    }

    /// Tell the kernel to stop copying the bytes of the connections no longer followed.
    fn unfollow(&mut self, capture: &mut crate::capture::Capture) {
        if self.out.unfollow.is_empty() {
            return;
        }
        match capture.unfollow(&self.out.unfollow) {
            Ok(n) => tracing::debug!("{n} sockets no longer copied by the kernel"),
            Err(e) => tracing::debug!("unfollowing sockets: {e:#}"),
        }
        self.out.unfollow.clear();
    }

    fn record(&mut self, bytes: &[u8]) {
        take_record(
            bytes,
            &self.capture_metrics,
            &mut self.conns,
            &mut self.out,
            &mut self.execs,
        );
    }

    fn flush(&mut self) {
        for issue in self.out.issues.drain(..) {
            self.request_metrics.issue(issue);
        }
        // Gaps and losses show at once, not at the next tick.
        self.capture_metrics.update_conns(&self.conns.stats);
        if let Some(d) = &mut self.downstream {
            d.take(&mut self.out);
        }
        if self.out.exchanges.is_empty() {
            return;
        }
        let now = self.conns.clock.now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mut layers = self.layers.as_deref().map(crate::layers::lock);
        // Exchanges (with their raw credentials) are dropped here, once fingerprinted.
        for mut ex in self.out.exchanges.drain(..) {
            if self.privacy.ignores(&ex) {
                self.ignored.inc();
                continue;
            }
            if let Some(route) = self.routes.route(&ex.method, &ex.path) {
                ex.route = route;
            }
            let route = self.request_metrics.observe(&ex, now);
            if let Some(otlp) = &mut self.otlp {
                otlp.observe(&ex, route);
            }
            sessions.observe(&ex, now);
            if let Some(l) = &mut layers {
                l.observe(&ex);
            }
            if let Some(j) = &mut self.jsonl {
                j.write(&ex.record(&self.addresses, self.raw_paths));
            }
        }
    }
}

/// Request headers the parsers keep: the built-in list, the configured extras, and every
/// header the identity stage reads credentials from.
pub(crate) fn header_allowlist(config: &Config, table: &SessionTable) -> HeaderAllowlist {
    HeaderAllowlist::new(
        HeaderAllowlist::DEFAULT
            .iter()
            .map(|s| s.to_string())
            .chain(config.capture.extra_headers.iter().cloned())
            .chain(table.header_names()),
    )
}

/// One kernel record into the connections (or, for an `exec`, into `execs`); a record
/// that does not decode is counted by reason. Returns whether it decoded.
pub(crate) fn take_record(
    bytes: &[u8],
    metrics: &CaptureMetrics,
    conns: &mut ConnTable,
    out: &mut ConnOutput,
    execs: &mut Vec<u32>,
) -> bool {
    match decode::decode(bytes) {
        Ok(event) => {
            metrics.record(&event);
            if let decode::Event::Exec { pid } = event {
                execs.push(pid);
            } else {
                conns.on_event(event, out);
            }
            true
        }
        Err(e) => {
            metrics.dropped.with_label_values(&[e.as_str()]).inc();
            tracing::debug!("bad kernel record: {e}");
            false
        }
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    // Bind first: a busy port is a clear error before anything touches the kernel.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is the port already in use?)",
                config.listen
            )
        })?;

    let registry = Registry::new();
    let capture_metrics = CaptureMetrics::register(&registry)?;
    let request_metrics = RequestMetrics::register(&registry, &config.metrics)?;
    crate::export::metrics::register_agent_info(&registry)?;
    let session_metrics = SessionMetrics::new(&registry, config.sessions.metrics_top_k)?;
    let ignored = prometheus::IntCounter::new(
        "api_observer_privacy_ignored_total",
        "Exchanges dropped unseen by the privacy off switch (processes, hosts, routes).",
    )?;
    registry.register(Box::new(ignored.clone()))?;
    let node = std::env::var("NODE_NAME").ok();
    let otlp = Otlp::start(&config.otlp, &registry, node.as_deref())?;
    let key = FingerprintKey::from_config(
        &config.identity,
        config.state_dir.as_deref(),
        Clock::system().now(),
    )
    .context("fingerprint key")?;
    if key.is_fleet() {
        tracing::info!(
            epoch = key.generation(),
            "fleet fingerprint key: derived from the shared secret, same on every node"
        );
    }
    let fleet =
        crate::fleet::Fleet::new(&config.fleet, &config.sessions, &config.scoring, &registry)
            .context("[fleet]")?;
    if let Some(f) = &fleet {
        tracing::info!(node = %f.node, "fleet mode: sessions shared through the fleet store");
        if !key.is_fleet() {
            tracing::warn!(
                "fleet mode is on but [identity] shared_secret_file is not set: each node \
                 makes its own fingerprints, so no session can match across nodes"
            );
        }
    }
    let mut table = SessionTable::new(
        SessionTableConfig {
            identity: config.identity.clone(),
            sessions: config.sessions.clone(),
            scoring: config.scoring.clone(),
            tiers: config.tiers.clone(),
            state_dir: config.state_dir.clone(),
        },
        key,
    );
    if let Some(f) = &fleet {
        table.set_fleet_node(&f.node);
    }
    if config.downstream.enabled {
        table.set_downstream(config.downstream.clone());
    }
    let loaded = table.open_state().context("state directory")?;
    if let Some(dir) = &config.state_dir {
        tracing::info!(
            "state directory {}: {loaded} durable freezes loaded",
            dir.display()
        );
    }
    let allowlist = header_allowlist(&config, &table);
    let sessions = Arc::new(Mutex::new(table));
    let mut app_state = server::AppState::new(registry, Arc::clone(&sessions));
    app_state.fleet = fleet.clone();
    let layers = crate::layers::start(
        &config.layers,
        &app_state.registry,
        config.metrics.patterns(),
    )
    .context("[layers]")?;
    app_state.layers = layers.clone();
    let downstream = match config.downstream.enabled {
        true => {
            let d = Downstream {
                metrics: crate::downstream::metrics::DownstreamMetrics::register(
                    &app_state.registry,
                )
                .context("downstream metrics")?,
                stats: Arc::default(),
            };
            app_state.downstream = Some(Arc::clone(&d.stats));
            Some(d)
        }
        false => None,
    };
    app_state.capture_privacy = capture_privacy(&config, &allowlist);
    let audit_target = config.output.audit_jsonl.clone().or_else(|| {
        config
            .state_dir
            .as_ref()
            .map(|d| d.join("audit.jsonl").display().to_string())
    });
    app_state.audit = Some(Arc::new(
        Audit::new(audit_target.as_deref(), &app_state.registry).context("audit stream")?,
    ));
    let state = Arc::new(app_state);
    // The TCP control listener's token: checked before anything touches the kernel.
    let control_tcp = match (&config.control.listen, &config.control.token_file) {
        (Some(addr), Some(file)) => {
            let mut access = surface::load_token(file)?;
            let c = &config.control;
            let tls = match (&c.tls_cert, &c.tls_key) {
                (Some(cert), Some(key)) => {
                    Some(tls::server_config(cert, key, c.client_ca.as_deref())?)
                }
                _ => None,
            };
            if let surface::Access::Token { client_cert, .. } = &mut access {
                *client_cert = c.client_ca.is_some();
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("control.listen: cannot listen on {addr}"))?;
            Some((listener, access, tls))
        }
        _ => None,
    };
    let control_gid = match &config.control.group {
        Some(g) => Some(control::group_id(g)?),
        None => None,
    };
    let alerts = match &config.output.alerts_jsonl {
        Some(target) => Some(JsonLines::open(target)?),
        None => None,
    };

    let mut capture = Capture::start(
        &config.capture,
        config.tls.filtered(),
        config.downstream.enabled,
    )?;
    // The control socket (a raw credential is accepted only there), once the privileged
    // part has started: missing privileges are reported as such first.
    let socket_path = config.control_socket_path();
    let control = if socket_path.as_os_str().is_empty() {
        None
    } else {
        Some(control::bind_with_group(socket_path, control_gid)?)
    };
    for p in &capture.probes {
        capture_metrics
            .probes
            .with_label_values(&[&p.attach_point])
            .set(p.attached as i64);
    }
    *state.probes.lock().expect("not poisoned") = capture.probes.clone();
    let attached = capture.probes.iter().filter(|p| p.attached).count();
    tracing::info!("attached {attached} of {} probes", capture.probes.len());

    let tls = start_tls(&config, &mut capture, &state)?;

    let clock = Clock::system();
    let mut conns = ConnTable::new(
        ParserLimits::default(),
        allowlist,
        config.capture.max_connections,
        clock,
    );
    conns.ignore_processes(config.privacy.ignore_processes.clone());
    conns.follow_downstream(config.downstream.enabled);
    conns.resolve_workloads(crate::workload::WorkloadResolver::new(
        config.kubernetes.clone(),
    ));
    // Sockets opened before start: after attaching, so none falls between the two.
    let existing = procfs::existing_connections(std::process::id());
    let seeded = capture.seed(&existing)?;
    let now_ns = monotonic_ns();
    for s in &existing {
        conns.seed(s, now_ns);
    }
    tracing::info!("following {seeded} connections that existed before start");

    let jsonl = match &config.output.exchanges_jsonl {
        Some(target) => Some(JsonLines::open(target)?),
        None => None,
    };
    let mut pipeline = Pipeline {
        conns,
        capture_metrics,
        request_metrics,
        jsonl,
        otlp,
        sessions: Arc::clone(&sessions),
        privacy: config.privacy.filter(),
        routes: config.metrics.patterns(),
        raw_paths: config.output.exchange_raw_paths,
        addresses: crate::exchange::AddressPolicy {
            mode: config.sessions.client_ip,
            ipv4_prefix: config.sessions.ipv4_prefix,
            ipv6_prefix: config.sessions.ipv6_prefix,
        },
        ignored,
        out: ConnOutput::default(),
        execs: Vec::new(),
        layers,
        downstream,
    };
    let sweep_task = tokio::spawn(sweep_loop(
        capture.sweep_map_ids(),
        Duration::from_secs(config.capture.sweep_interval_secs),
        pipeline.capture_metrics.kernel_sockets.clone(),
        pipeline.capture_metrics.kernel_sockets_swept.clone(),
    ));
    let (fleet_tx, fleet_tasks) = match &fleet {
        Some(f) => {
            let (tx, rx) = tokio::sync::watch::channel(None);
            let period = Duration::from_secs(config.scoring.interval_secs);
            let tasks = [
                tokio::spawn(crate::fleet::sync::publish_loop(
                    Arc::clone(f),
                    Arc::clone(&state),
                    rx,
                    period,
                )),
                tokio::spawn(crate::fleet::sync::freeze_loop(
                    Arc::clone(f),
                    Arc::clone(&state),
                )),
            ];
            (Some(tx), tasks.into_iter().collect())
        }
        None => (None, Vec::new()),
    };
    let scoring_task = tokio::spawn(scoring_loop(
        Clock::system(),
        Arc::clone(&state),
        session_metrics,
        Duration::from_secs(config.scoring.interval_secs),
        alerts,
        fleet_tx,
    ));

    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
    // AsyncFd (which owns the ring buffer) is dropped.
    let mut ring = unsafe {
        AsyncFd::register_with_interest(capture.take_ring()?, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let app = server::router(Arc::clone(&state));
    let server_task = tokio::spawn(server::serve(listener, app));
    let (control_task, control_socket) = match control {
        Some((unix, guard)) => {
            let access = surface::Access::Uids(config.control.uids.clone());
            let app = server::control_router(Arc::clone(&state), surface::Guard::control(access));
            tracing::info!("control socket on {}", guard.path().display());
            (Some(tokio::spawn(server::serve(unix, app))), Some(guard))
        }
        None => (None, None),
    };
    let control_tcp_task = control_tcp.map(|(listener, access, tls)| {
        let how = match (&tls, &config.control.client_ca) {
            (None, _) => "bearer token required",
            (Some(_), None) => "TLS; bearer token required",
            (Some(_), Some(_)) => "mutual TLS: client certificate and bearer token required",
        };
        tracing::info!(
            "control listener on {} ({how})",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        let app = server::control_router(Arc::clone(&state), surface::Guard::control(access));
        match tls {
            Some(tls) => tokio::spawn(server::serve(tls::TlsListener::new(listener, tls), app)),
            None => tokio::spawn(server::serve(listener, app)),
        }
    });
    // A first snapshot before the agent says it is ready: the API never answers from an
    // empty one (the scoring loop publishes the next ones).
    state.publish(&sessions.lock().unwrap_or_else(|e| e.into_inner()));
    state.ready.store(true, Ordering::Relaxed);
    tracing::info!("observer running; HTTP endpoint on {}", config.listen);

    // Signal streams made once: a signal that arrives while a batch is being handled is
    // kept for the next turn of the loop, not lost.
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigusr1 = tokio::signal::unix::signal(SignalKind::user_defined1())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The kernel wakes the agent only when the ring fills up; otherwise it is drained here.
    let mut drain = tokio::time::interval(DRAIN_PERIOD);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                if pipeline.drain(guard.get_inner_mut()) < BATCH {
                    guard.clear_ready();
                }
                pipeline.unfollow(&mut capture);
                pipeline.order_skips(&mut capture);
            }
            _ = drain.tick() => {
                pipeline.drain(ring.get_mut());
                pipeline.unfollow(&mut capture);
                pipeline.order_skips(&mut capture);
                if let Some(tls) = &tls {
                    for pid in pipeline.execs.drain(..) {
                        let _ = tls.execs.send(pid);
                    }
                }
                pipeline.execs.clear();
            }
            _ = tick.tick() => {
                match capture.kernel_drops() {
                    Ok(totals) => pipeline.capture_metrics.update_kernel_drops(totals),
                    Err(e) => tracing::debug!("reading kernel drop counters: {e:#}"),
                }
                pipeline.conns.sweep(monotonic_ns(), IDLE_CONNECTION, &mut pipeline.out);
                pipeline.conns.clock = Clock::system();
                pipeline.capture_metrics.connections.set(pipeline.conns.len() as i64);
                pipeline.capture_metrics.update_conns(&pipeline.conns.stats);
                pipeline.flush();
            }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigusr1.recv() => {
                let purged = sessions.lock().unwrap_or_else(|e| e.into_inner()).purge();
                tracing::info!("SIGUSR1: purged {purged} sessions");
                state.republish.notify_one();
            }
        }
        if server_task.is_finished() {
            anyhow::bail!("the HTTP endpoint stopped");
        }
    }
    state.ready.store(false, Ordering::Relaxed);
    server_task.abort();
    if let Some(t) = control_task {
        t.abort();
    }
    if let Some(t) = control_tcp_task {
        t.abort();
    }
    drop(control_socket);
    scoring_task.abort();
    for t in fleet_tasks {
        t.abort();
    }
    sweep_task.abort();
    drop(ring);
    if let Some(tls) = tls {
        // Its thread drops the programs it holds: every probe is detached.
        tls.stop();
    }
    drop(capture);
    if let Some(otlp) = pipeline.otlp.take() {
        otlp.shutdown();
    }
    tracing::info!(
        "stopped; probes detached; {} records dropped in total",
        pipeline.capture_metrics.total_dropped()
    );
    Ok(())
}

/// The TLS attachment on a thread of its own: scanning `/proc`, reading programs' ELF
/// files and attaching uprobes never hold up the draining of the ring buffer. It owns
/// the kernel programs from then on; stopping it detaches them.
struct TlsThread {
    /// Processes that called `exec`, to look at.
    execs: std::sync::mpsc::Sender<u32>,
    handle: std::thread::JoinHandle<()>,
}

impl TlsThread {
    fn stop(self) {
        drop(self.execs);
        if self.handle.join().is_err() {
            tracing::warn!("tls: the attachment thread panicked");
        }
    }
}

/// How often the TLS thread looks for work when no process calls `exec`.
const TLS_POLL: Duration = Duration::from_millis(50);

/// Load the TLS library probes, attach them to what runs now, and go on in a thread of
/// their own. A failure to load them leaves the agent running on plaintext capture, with
/// the reason in the log; a thread that cannot be started stops the agent (it would take
/// the programs with it).
fn start_tls(
    config: &Config,
    capture: &mut Capture,
    state: &Arc<server::AppState>,
) -> anyhow::Result<Option<TlsThread>> {
    if !config.tls.enabled {
        tracing::info!("tls: disabled in the configuration");
        return Ok(None);
    }
    let Some(ebpf) = capture.ebpf_mut() else {
        return Ok(None);
    };
    let mut tls = match TlsProbes::new(ebpf, config.tls.clone(), &state.registry) {
        Ok(tls) => tls,
        Err(e) => {
            tracing::warn!("tls: library probes unavailable, capturing plaintext only: {e:#}");
            return Ok(None);
        }
    };
    tls.start(ebpf);
    let status = tls.status();
    tracing::info!(
        "tls: {} target(s) attached, {} could not be probed",
        status.iter().filter(|t| t.attached).count(),
        status.iter().filter(|t| !t.attached).count()
    );
    *state.tls.lock().unwrap_or_else(|e| e.into_inner()) = status;
    let Some(mut ebpf) = capture.take_ebpf() else {
        return Ok(None);
    };
    let (execs, incoming) = std::sync::mpsc::channel::<u32>();
    let state = Arc::clone(state);
    let handle = std::thread::Builder::new()
        .name("tls-attach".into())
        .spawn(move || {
            let mut last_reap = std::time::Instant::now();
            loop {
                match incoming.recv_timeout(TLS_POLL) {
                    Ok(pid) => tls.on_exec(&mut ebpf, pid),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
                while let Ok(pid) = incoming.try_recv() {
                    tls.on_exec(&mut ebpf, pid);
                }
                tls.poll(&mut ebpf);
                if last_reap.elapsed() >= Duration::from_secs(1) {
                    tls.reap(&mut ebpf);
                    last_reap = std::time::Instant::now();
                }
                if tls.take_changed() {
                    *state.tls.lock().unwrap_or_else(|e| e.into_inner()) = tls.status();
                }
            }
            // Dropping the programs detaches every probe.
            drop(tls);
            drop(ebpf);
        })
        .context("starting the TLS attachment thread")?;
    Ok(Some(TlsThread { execs, handle }))
}

/// The capture side of `/privacy`: what is read from the wire and what is never
/// observed.
fn capture_privacy(config: &Config, allowlist: &HeaderAllowlist) -> serde_json::Value {
    serde_json::json!({
        "bytes_per_call": config.capture.capture_bytes,
        "bodies": "skipped unparsed, never stored",
        "header_allowlist": allowlist.names(),
        "off_switch": config.privacy,
        "outputs": {
            "exchanges_jsonl": config.output.exchanges_jsonl.is_some(),
            "alerts_jsonl": config.output.alerts_jsonl.is_some(),
        },
        "fleet_store": crate::fleet::privacy(&config.fleet, config.sessions.idle_ttl_secs),
        "downstream": if config.downstream.enabled {
            serde_json::json!({
                "protocols": ["dns", "postgres", "mysql", "redis", "http"],
                "kept": "per call: protocol, target address and the DNS name it was resolved from, operation, statement fingerprint (every literal replaced by ?), latency, error class",
                "never_kept": "literals, bind values, rows, Redis keys and values, passwords, DNS answers beyond A/AAAA addresses",
            })
        } else {
            serde_json::json!(false)
        },
    })
}

/// Score every session on a period; report state changes as alerts; publish the snapshot
/// the API reads (after each pass, and when a write asks for it).
async fn scoring_loop(
    clock: Clock,
    state: Arc<server::AppState>,
    mut metrics: SessionMetrics,
    period: Duration,
    mut alerts: Option<JsonLines>,
    fleet: Option<tokio::sync::watch::Sender<Option<crate::fleet::sync::Round>>>,
) {
    let sessions = Arc::clone(&state.sessions);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.republish.notified() => {
                let table = sessions.lock().unwrap_or_else(|e| e.into_inner());
                state.publish(&table);
                continue;
            }
        }
        let now = clock.now();
        let changes = {
            let mut table = sessions.lock().unwrap_or_else(|e| e.into_inner());
            match table.maybe_rotate(now) {
                Ok(Some(r)) => tracing::info!(
                    generation = r.key_generation,
                    sessions_dropped = r.sessions_dropped,
                    frozen_dropped = r.frozen_dropped,
                    "fingerprint key rotated; earlier fingerprints can no longer be linked"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!("fingerprint key rotation failed: {e}"),
            }
            let changes = table.score(now);
            let expired = table.expire(now);
            if expired > 0 {
                tracing::debug!("{expired} idle sessions expired");
            }
            metrics.update(&table);
            state.publish(&table);
            // Fleet mode: what to publish, copied out; the store is talked to by the
            // fleet task, never under the table's lock (the latest round replaces one
            // not yet sent: nothing is buffered).
            if let Some(tx) = &fleet {
                tx.send_replace(Some(crate::fleet::sync::Round {
                    epoch: table.key_generation(),
                    publications: Arc::new(table.fleet_publications(now)),
                }));
            }
            changes
        };
        for change in &changes {
            tracing::info!(
                session = %change.session_id,
                from = ?change.from,
                to = ?change.to,
                score = change.score,
                "session state changed"
            );
            if let Some(a) = &mut alerts {
                a.write(change);
            }
        }
    }
}

/// Sweep the kernel's socket table now and then, on a blocking thread: sockets closed
/// without a `close` the hooks saw (their process exited) would otherwise fill it.
async fn sweep_loop(
    map_id: (u32, u32),
    every: Duration,
    entries: prometheus::IntGauge,
    swept: prometheus::IntCounter,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match tokio::task::spawn_blocking(move || crate::capture::sweep_sockets(map_id)).await {
            Ok(Ok(s)) => {
                entries.set((s.entries - s.removed) as i64);
                swept.inc_by(s.removed as u64);
                tracing::debug!(
                    "kernel socket table: {} entries, {} closed ones removed",
                    s.entries,
                    s.removed
                );
            }
            Ok(Err(e)) => tracing::debug!("sweeping the kernel socket table: {e:#}"),
            Err(e) => tracing::debug!("socket sweep task: {e}"),
        }
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
