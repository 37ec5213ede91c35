//! `observer run`: load the probes, follow connections, parse, export. Stops cleanly on
//! SIGINT/SIGTERM (dropping the capture detaches every probe).

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::Context as _;
use prometheus::Registry;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    capture::{decode, metrics::CaptureMetrics, procfs, Capture},
    config::Config,
    conn::{Clock, ConnOutput, ConnTable},
    export::{jsonl::JsonLines, metrics::RequestMetrics, server},
    http::{HeaderAllowlist, ParserLimits},
};

/// Connections silent for this long are forgotten (their close was not seen).
const IDLE_CONNECTION: Duration = Duration::from_secs(15 * 60);
/// Most ring-buffer records handled before giving other work a turn.
const BATCH: usize = 4096;

/// Everything the pipeline does with one batch of kernel records.
struct Pipeline {
    conns: ConnTable,
    capture_metrics: CaptureMetrics,
    request_metrics: RequestMetrics,
    jsonl: Option<JsonLines>,
    out: ConnOutput,
}

impl Pipeline {
    fn record(&mut self, bytes: &[u8]) {
        match decode::decode(bytes) {
            Ok(event) => {
                let kind = match &event {
                    decode::Event::Accept(_) => "accept",
                    decode::Event::Connect(_) => "connect",
                    decode::Event::Addresses(_) => "addresses",
                    decode::Event::Close { .. } => "close",
                    decode::Event::Data { direction, len, .. } => {
                        let dir = match direction {
                            decode::Direction::Ingress => "ingress",
                            decode::Direction::Egress => "egress",
                        };
                        self.capture_metrics
                            .bytes
                            .with_label_values(&[dir])
                            .inc_by(*len);
                        "data"
                    }
                };
                self.capture_metrics.events.with_label_values(&[kind]).inc();
                self.conns.on_event(event, &mut self.out);
            }
            Err(e) => {
                self.capture_metrics
                    .dropped
                    .with_label_values(&[e.as_str()])
                    .inc();
                tracing::debug!("bad kernel record: {e}");
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        for issue in self.out.issues.drain(..) {
            self.request_metrics.issue(issue);
        }
        for ex in self.out.exchanges.drain(..) {
            self.request_metrics.observe(&ex);
            if let Some(j) = &mut self.jsonl {
                j.write(&ex);
            }
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
    let request_metrics = RequestMetrics::register(&registry)?;
    let state = Arc::new(server::AppState::new(registry));

    let mut capture = Capture::start(&config.capture)?;
    for p in &capture.probes {
        capture_metrics
            .probes
            .with_label_values(&[&p.attach_point])
            .set(p.attached as i64);
    }
    *state.probes.lock().expect("not poisoned") = capture.probes.clone();
    let attached = capture.probes.iter().filter(|p| p.attached).count();
    tracing::info!("attached {attached} of {} probes", capture.probes.len());

    let clock = Clock::now();
    let allowlist = HeaderAllowlist::new(
        HeaderAllowlist::DEFAULT
            .iter()
            .map(|s| s.to_string())
            .chain(config.capture.extra_headers.iter().cloned()),
    );
    let mut conns = ConnTable::new(
        ParserLimits::default(),
        allowlist,
        config.capture.max_connections,
        clock,
    );
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
        out: ConnOutput::default(),
    };

    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
    // AsyncFd (which owns the ring buffer) is dropped.
    let mut ring = unsafe {
        AsyncFd::register_with_interest(capture.take_ring()?, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let app = server::router(Arc::clone(&state));
    let server_task = tokio::spawn(async move { axum::serve(listener, app).await });
    state.ready.store(true, Ordering::Relaxed);
    tracing::info!("observer running; HTTP endpoint on {}", config.listen);

    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                let mut n = 0;
                while let Some(item) = rb.next() {
                    pipeline.record(&item);
                    n += 1;
                    if n >= BATCH {
                        break;
                    }
                }
                if n < BATCH {
                    guard.clear_ready();
                }
            }
            _ = tick.tick() => {
                match capture.kernel_drops() {
                    Ok(totals) => pipeline.capture_metrics.update_kernel_drops(totals),
                    Err(e) => tracing::debug!("reading kernel drop counters: {e:#}"),
                }
                let before = pipeline.conns.stats.evicted;
                pipeline.conns.sweep(monotonic_ns(), IDLE_CONNECTION, &mut pipeline.out);
                pipeline.conns.clock = Clock::now();
                let evicted = pipeline.conns.stats.evicted - before;
                if evicted > 0 {
                    pipeline.capture_metrics.dropped.with_label_values(&["connection_evicted"]).inc_by(evicted);
                }
                pipeline.capture_metrics.connections.set(pipeline.conns.len() as i64);
                pipeline.flush();
            }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
        }
        if server_task.is_finished() {
            anyhow::bail!("the HTTP endpoint stopped");
        }
    }
    state.ready.store(false, Ordering::Relaxed);
    server_task.abort();
    drop(ring);
    drop(capture);
    tracing::info!(
        "stopped; probes detached; {} records dropped in total",
        pipeline.capture_metrics.total_dropped()
    );
    Ok(())
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
