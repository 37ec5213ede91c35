//! The connection to the Redis-protocol store: one server (`redis://`, `rediss://`) or a
//! Redis Cluster (seed nodes), behind one [`Conn`]. Every call has a timeout, so a slow
//! store never holds up the scoring loop for long; a failed first connection is retried
//! with backoff on later calls (after it, the connection manager and the cluster client
//! reconnect by themselves). Counts the commands it sends (for `bench fleet`).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    Client, Cmd, FromRedisValue, IntoConnectionInfo, Pipeline, RedisFuture, Value,
};

use super::FleetConfig;

/// Longest one store call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff between failed connection attempts: from this...
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// ...doubling up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("fleet store: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("fleet store: no answer within {0:?}")]
    Timeout(Duration),
    #[error("fleet store: not connected (next attempt in {0:?})")]
    Backoff(Duration),
}

/// Which replies of a pipeline are kept (the others are marked `.ignore()`).
#[derive(Clone, Copy, Debug)]
pub enum Replies {
    All,
    None,
    /// The last `n` (the first ones are ignored).
    Last(usize),
}

/// A connection to one server or to a cluster; both reconnect by themselves.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the store is (made once; its size does not matter).
#[expect(
    clippy::large_enum_variant,
    reason = "one value per agent, never moved on a hot path"
)]
enum Target {
    Single(Client),
    /// The cluster, and plain clients on its seeds for pub/sub (a message published on
    /// any node reaches the subscribers of every node), tried in turn.
    Cluster(ClusterClient, Vec<Client>),
}

pub struct Store {
    target: Target,
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// When the next connection attempt may be made, and the current backoff.
    retry: Mutex<(Instant, Duration)>,
    /// Commands sent.
    pub ops: AtomicU64,
}

/// A client for one server URL with the configured credentials and CA.
fn client(url: &str, cfg: &FleetConfig, password: Option<&str>) -> redis::RedisResult<Client> {
    let mut info = url.into_connection_info()?;
    let mut settings = info.redis_settings().clone();
    if let Some(u) = &cfg.username {
        settings = settings.set_username(u);
    }
    if let Some(p) = password {
        settings = settings.set_password(p);
    }
    info = info.set_redis_settings(settings);
    match &cfg.tls_ca_file {
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "fleet.tls_ca_file cannot be read",
                    e.to_string(),
                ))
            })?;
            Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
        None => Client::open(info),
    }
}

impl Store {
    /// The clients (no connection is made yet). `password`: from `password_file`.
    pub fn new(cfg: &FleetConfig, password: Option<&str>) -> redis::RedisResult<Self> {
        let target = if cfg.cluster.is_empty() {
            let url = cfg.endpoint.as_deref().unwrap_or_default();
            Target::Single(client(url, cfg, password)?)
        } else {
            let mut b = ClusterClientBuilder::new(cfg.cluster.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(CALL_TIMEOUT)
                .retries(2);
            if let Some(u) = &cfg.username {
                b = b.username(u);
            }
            if let Some(p) = password {
                b = b.password(p);
            }
            if let Some(ca) = &cfg.tls_ca_file {
                let pem = std::fs::read(ca).map_err(|e| {
                    redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "fleet.tls_ca_file cannot be read",
                        e.to_string(),
                    ))
                })?;
                b = b.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                });
            }
            let seeds = cfg
                .cluster
                .iter()
                .map(|url| client(url, cfg, password))
                .collect::<redis::RedisResult<_>>()?;
            Target::Cluster(b.build()?, seeds)
        };
        Ok(Self {
            target,
            conn: tokio::sync::Mutex::new(None),
            retry: Mutex::new((Instant::now(), BACKOFF_MIN)),
            ops: AtomicU64::new(0),
        })
    }

    /// The connection, made now if there is none yet (within the backoff).
    pub async fn conn(&self) -> Result<Conn, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        {
            let (next, _) = *self.retry.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if now < next {
                return Err(StoreError::Backoff(next - now));
            }
        }
        let made = tokio::time::timeout(CONNECT_TIMEOUT * 2, async {
            match &self.target {
                Target::Single(client) => {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(Some(CALL_TIMEOUT))
                        .set_number_of_retries(2)
                        .set_max_delay(BACKOFF_MAX);
                    ConnectionManager::new_with_config(client.clone(), config)
                        .await
                        .map(Conn::Single)
                }
                Target::Cluster(client, _) => {
                    client.get_async_connection().await.map(Conn::Cluster)
                }
            }
        })
        .await;
        let mut retry = self.retry.lock().unwrap_or_else(|e| e.into_inner());
        match made {
            Ok(Ok(c)) => {
                *retry = (Instant::now(), BACKOFF_MIN);
                *slot = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => {
                *retry = (Instant::now() + retry.1, (retry.1 * 2).min(BACKOFF_MAX));
                Err(e.into())
            }
            Err(_) => {
                *retry = (Instant::now() + retry.1, (retry.1 * 2).min(BACKOFF_MAX));
                Err(StoreError::Timeout(CONNECT_TIMEOUT * 2))
            }
        }
    }

    /// Run a pipeline (its commands counted), within the call timeout. `replies` says
    /// which replies the pipeline keeps (those not marked `.ignore()`): a Redis Cluster
    /// takes a pipeline only when all its keys are in one slot, so there each command is
    /// sent on its own, all at once (the cluster connection pipelines those bound for the
    /// same node), and the kept replies are picked by `replies`.
    pub async fn pipe<T: FromRedisValue>(
        &self,
        pipe: &Pipeline,
        replies: Replies,
    ) -> Result<T, StoreError> {
        let c = self.conn().await?;
        self.ops.fetch_add(pipe.len() as u64, Ordering::Relaxed);
        let run = async {
            match c {
                Conn::Single(mut c) => pipe.query_async(&mut c).await.map_err(StoreError::from),
                Conn::Cluster(c) => {
                    let calls = pipe.cmd_iter().map(|cmd| {
                        let mut c = c.clone();
                        async move { cmd.query_async::<Value>(&mut c).await }
                    });
                    let mut values = futures_util::future::try_join_all(calls).await?;
                    let kept = match replies {
                        Replies::All => values,
                        Replies::None => Vec::new(),
                        Replies::Last(n) => values.split_off(values.len().saturating_sub(n)),
                    };
                    T::from_redis_value(Value::Array(kept)).map_err(|e| StoreError::Redis(e.into()))
                }
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, run).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(CALL_TIMEOUT)),
        }
    }

    /// Run one command (counted), within the call timeout.
    pub async fn cmd<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut c = self.conn().await?;
        self.ops.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(CALL_TIMEOUT, cmd.query_async(&mut c)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StoreError::Timeout(CALL_TIMEOUT)),
        }
    }

    /// Load a script on the server (every master of a cluster).
    pub async fn load_script(&self, script: &redis::Script) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        self.ops.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(CALL_TIMEOUT, script.prepare_invoke().load_async(&mut c)).await {
            Ok(r) => r.map(|_| ()).map_err(Into::into),
            Err(_) => Err(StoreError::Timeout(CALL_TIMEOUT)),
        }
    }

    /// A new pub/sub connection (for the freeze channel): to the server, or to the first
    /// cluster seed that answers.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, StoreError> {
        let clients = match &self.target {
            Target::Single(c) => std::slice::from_ref(c),
            Target::Cluster(_, seeds) => seeds.as_slice(),
        };
        let mut last = StoreError::Timeout(CONNECT_TIMEOUT);
        for client in clients {
            match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
                Ok(Ok(p)) => return Ok(p),
                Ok(Err(e)) => last = e.into(),
                Err(_) => last = StoreError::Timeout(CONNECT_TIMEOUT),
            }
        }
        Err(last)
    }
}

/// Whether `e` says the server does not know a script (flushed, or a new server).
pub fn is_noscript(e: &StoreError) -> bool {
    match e {
        StoreError::Redis(r) => {
            r.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                || r.to_string().contains("NOSCRIPT")
        }
        _ => false,
    }
}
