//! The broker as a library: [`Broker::new`] checks a configuration, [`Broker::start`]
//! binds its listeners and runs it, [`RunningBroker`] tells where it listens and stops it.

use std::net::SocketAddr;

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use fieldbridge_service::LogThrottle;

use crate::acl::{Acl, AclError};
use crate::auth::{AuthError, PasswordFile};
use crate::backoff::LoginBackoff;
use crate::config::{AnonymousPolicy, AuthConfig, Config, ConfigError};
use crate::connection::{self, delayed_will, Accepted, ListenerInfo};
use crate::context::{BrokerContext, CONCURRENT_PASSWORD_CHECKS};
use crate::metrics::{Metrics, Stats};
use crate::persistence::{self, Op, Snapshot, StoreError};
use crate::platform::{Platform, RegistryError};
use crate::registry::{Kick, Owner, Registry};
use crate::retained::{RetainOutcome, RetainedStore};
use crate::router::Router;
use crate::session::{Inflight, InflightState, SessionLimits, SessionState};
use crate::shared_subscriptions::Subscriptions;
use crate::transport::{TransportError, Upgrade};

/// Least time between two log lines about refused clients (logins during a backoff,
/// clients closed because persistence failed).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Time connections get to close at shutdown before the broker stops waiting for them.
const CONNECTIONS_GRACE: Duration = Duration::from_millis(500);
/// Time the database gets to commit its last writes at shutdown.
const STORE_GRACE: Duration = Duration::from_millis(1500);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Acl(#[from] AclError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Platform(#[from] RegistryError),
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// A checked configuration, ready to start.
#[derive(Debug, Clone)]
pub struct Broker {
    config: Config,
}

impl Broker {
    pub fn new(config: Config) -> Result<Self, BrokerError> {
        Ok(Self {
            config: checked(config)?,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Loads the password and ACL files and the persisted state, binds every listener, and
    /// starts serving in the current Tokio runtime.
    pub async fn start(self) -> Result<RunningBroker, BrokerError> {
        let config = self.config;
        let Auth { passwords, acl } = load_auth(&config)?;
        if passwords.is_none()
            && config.platform.is_none()
            && config.allow_anonymous == AnonymousPolicy::Never
        {
            tracing::warn!(
                "allow_anonymous is false and there is no password file: no client can connect"
            );
        }
        let mut listeners = Vec::new();
        for listener in config.effective_listeners() {
            let upgrade = Upgrade::for_listener(&listener)?;
            let bound =
                TcpListener::bind(listener.bind)
                    .await
                    .map_err(|source| BrokerError::Bind {
                        addr: listener.bind,
                        error: source,
                    })?;
            let local = bound.local_addr().map_err(|source| BrokerError::Bind {
                addr: listener.bind,
                error: source,
            })?;
            let info = ListenerInfo {
                local,
                loopback: local.ip().is_loopback(),
            };
            listeners.push((bound, info, upgrade));
        }
        let (store, snapshot) = match &config.persistence {
            Some(persistence) => {
                let (store, snapshot) = persistence::open(persistence).await?;
                (Some(store), snapshot)
            }
            None => (None, Snapshot::default()),
        };
        let platform = match &config.platform {
            Some(platform) => Some(Arc::new(Platform::open(platform).await?)),
            None => None,
        };
        let limits = config.limits.clone();
        let metrics = Arc::new(Metrics::default());
        let ctx = Arc::new(BrokerContext {
            router: Router {
                subscriptions: RwLock::new(Subscriptions::default()),
                retained: RwLock::new(RetainedStore::new(
                    limits.max_retained_messages,
                    limits.max_retained_bytes,
                )),
                store,
                acl: acl.into(),
                limits: SessionLimits {
                    max_inflight: limits.max_inflight,
                    max_queued_messages: limits.max_queued_messages,
                    max_queued_bytes: limits.max_queued_bytes,
                    on_queue_full: limits.on_queue_full,
                },
                metrics: metrics.clone(),
                drop_warnings: LogThrottle::new(crate::router::DROP_WARNING_INTERVAL),
                shared_groups: config.platform.as_ref().map(|_| Default::default()),
            },
            registry: Registry::new(limits.max_sessions),
            passwords: passwords.into(),
            platform,
            anonymous: config.allow_anonymous,
            metrics,
            password_checks: Semaphore::new(CONCURRENT_PASSWORD_CHECKS),
            logins: LoginBackoff::new(config.auth.login_backoff.clone()),
            login_refusals: LogThrottle::new(REFUSAL_LOG_INTERVAL),
            durability_closes: LogThrottle::new(REFUSAL_LOG_INTERVAL),
            shutdown: CancellationToken::new(),
            started: Instant::now(),
            limits,
            response_information: config.response_information.clone(),
        });
        restore(&ctx, snapshot).await;

        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(ctx.limits.max_connections));
        let mut local_addrs = Vec::new();
        for (listener, info, upgrade) in listeners {
            tracing::info!(address = %info.local, "listening");
            local_addrs.push(info.local);
            tracker.spawn(accept_loop(
                listener,
                info,
                upgrade,
                ctx.clone(),
                slots.clone(),
                tracker.clone(),
            ));
        }
        tracker.spawn(expire_silent_clients(ctx.clone()));
        if !config.sys_interval.is_zero() {
            tracker.spawn(crate::sys::run(ctx.clone(), config.sys_interval));
        }
        let done = tokio::spawn(supervise(ctx.clone(), tracker));
        Ok(RunningBroker {
            local_addrs,
            ctx,
            done: Some(done),
            config,
        })
    }
}

/// A validated configuration, with the limits of platform mode applied.
fn checked(mut config: Config) -> Result<Config, BrokerError> {
    config.validate("configuration")?;
    if config.platform.is_some() {
        config.limits.max_payload = config.limits.max_payload.min(crate::platform::MAX_PAYLOAD);
    }
    Ok(config)
}

/// The password file and the ACL of a configuration, each when it names one.
struct Auth {
    passwords: Option<Arc<PasswordFile>>,
    acl: Option<Arc<Acl>>,
}

/// Reads and checks the password file and the ACL a configuration names.
fn load_auth(config: &Config) -> Result<Auth, BrokerError> {
    let passwords = match &config.auth.password_file {
        Some(_) if config.platform.is_some() => {
            tracing::warn!("platform mode: the password file is not used (tokens are)");
            None
        }
        Some(path) => Some(Arc::new(PasswordFile::load(path)?)),
        None => None,
    };
    let acl = match &config.auth.acl_file {
        Some(path) => Some(Arc::new(Acl::load(path)?)),
        None => None,
    };
    Ok(Auth { passwords, acl })
}

/// Puts the persisted state back: retained messages (as far as the limits allow; the
/// others are deleted), sessions, their subscriptions.
async fn restore(ctx: &Arc<BrokerContext>, snapshot: Snapshot) {
    let sessions = snapshot.sessions.len();
    let mut left_out = Vec::new();
    let retained = {
        let mut store = ctx.router.retained.write();
        for message in snapshot.retained {
            let topic = message.topic.clone();
            if store.set(Arc::new(message)) == RetainOutcome::Full {
                left_out.push(topic);
            }
        }
        store.len()
    };
    if !left_out.is_empty() {
        tracing::warn!(
            count = left_out.len(),
            "stored retained messages beyond max_retained_messages or max_retained_bytes: deleted"
        );
        if let Some(store) = &ctx.router.store {
            for topic in left_out {
                if store.send(Op::ClearRetained { topic }).await.is_err() {
                    break;
                }
            }
        }
    }
    let now = crate::message::unix_now_ms();
    for (client_id, stored) in snapshot.sessions {
        // A session connected when the broker stopped is counted as absent from now.
        let absent_since = stored.absent_since_ms.unwrap_or(now);
        if session_expired(stored.expiry, absent_since, now) {
            tracing::debug!(%client_id, "stored session expired while the broker was down");
            if let Some(store) = &ctx.router.store {
                if store.send(Op::DeleteSession { client_id }).await.is_err() {
                    break;
                }
            }
            continue;
        }
        let mut state = SessionState::new();
        for item in stored.inflight {
            let state_of = match (item.released, item.qos) {
                (true, _) => InflightState::AwaitingPubComp,
                (false, fieldbridge_mqtt::codec::QoS::ExactlyOnce) => InflightState::AwaitingPubRec,
                (false, _) => InflightState::AwaitingPubAck,
            };
            if let Some(pkid) = item.pkid {
                state.restore_inflight(Inflight {
                    pkid,
                    state: state_of,
                    delivery: item.into_delivery(),
                });
            }
        }
        for (seq, size) in stored.queued {
            state.restore_spilled(seq, size);
        }
        for pkid in stored.incoming_qos2 {
            state.restore_incoming_qos2(pkid);
        }
        for (filter, subscription) in &stored.subscriptions {
            state.add_subscription(filter.clone(), *subscription);
        }
        let owner = stored.owner.as_deref().and_then(|text| {
            let owner = Owner::decode(text);
            if owner.is_none() {
                tracing::warn!(%client_id, owner = text, "stored session owner not understood: the first client to resume it owns it");
            }
            owner
        });
        let session = ctx.registry.restore(client_id, state, owner);
        {
            let mut inner = session.inner.lock();
            inner.expiry = stored.expiry;
            inner.absent_since_ms = absent_since;
        }
        if let Some((will, due_ms)) = stored.pending_will {
            let wait = Duration::from_millis(due_ms.saturating_sub(now));
            tokio::spawn(delayed_will(
                ctx.clone(),
                session.clone(),
                0,
                wait,
                Arc::new(will),
            ));
        }
        let mut tree = ctx.router.subscriptions.write();
        for (filter, subscription) in stored.subscriptions {
            tree.subscribe(&filter, session.id, subscription, session.clone());
        }
    }
    if sessions + retained > 0 {
        tracing::info!(sessions, retained, "restored persisted state");
    }
}

/// Whether a session absent since `absent_since` (Unix ms) with `expiry` seconds has
/// ended by `now`.
pub(crate) fn session_expired(expiry: u32, absent_since: u64, now: u64) -> bool {
    expiry != u32::MAX && now.saturating_sub(absent_since) >= u64::from(expiry) * 1000
}

async fn accept_loop(
    listener: TcpListener,
    info: ListenerInfo,
    upgrade: Option<Arc<Upgrade>>,
    ctx: Arc<BrokerContext>,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = ctx.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, max = ctx.limits.max_connections, "max_connections reached: connection closed");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tracker.spawn(connection::serve(Box::new(Accepted {
                    stream,
                    peer,
                    listener: info,
                    ctx: ctx.clone(),
                    slot,
                    upgrade: upgrade.clone(),
                })));
            }
            Err(error) => {
                // Out of file descriptors, usually: wait instead of spinning.
                tracing::warn!(%error, listener = %info.local, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// How often connections are checked for an expired keepalive (its precision).
const KEEPALIVE_SWEEP: Duration = Duration::from_millis(250);

/// Closes the connections of clients silent for 1.5 times their keepalive. One task for
/// all connections instead of a timer in each keeps idle connections small.
async fn expire_silent_clients(ctx: Arc<BrokerContext>) {
    let mut ticker = tokio::time::interval(KEEPALIVE_SWEEP);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                ctx.registry.expire_silent(ctx.now_ms());
                let timeout = ctx.limits.slow_subscriber_timeout.as_millis();
                let kicked = ctx.registry.kick_slow(
                    crate::message::unix_now_ms(),
                    u64::try_from(timeout).unwrap_or(u64::MAX),
                );
                ctx.metrics
                    .slow_subscribers
                    .fetch_add(kicked, std::sync::atomic::Ordering::Relaxed);
                end_expired_sessions(&ctx).await;
            }
            () = ctx.shutdown.cancelled() => return,
        }
    }
}

/// Removes the sessions whose client has been away longer than their expiry interval,
/// from the database too.
async fn end_expired_sessions(ctx: &BrokerContext) {
    let ended = ctx
        .registry
        .expire_absent(crate::message::unix_now_ms(), &ctx.router.subscriptions);
    for session in ended {
        tracing::debug!(client_id = %session.client_id, "session expired");
        if let Some(store) = ctx.router.store.as_ref().filter(|_| session.persistent) {
            let op = Op::DeleteSession {
                client_id: session.client_id.clone(),
            };
            if store.send(op).await.is_err() {
                // Expired again after a restart: the stored record says when it left.
                return;
            }
        }
    }
}

/// Waits for shutdown, then closes every connection and commits the last writes.
async fn supervise(ctx: Arc<BrokerContext>, tracker: TaskTracker) {
    ctx.shutdown.cancelled().await;
    ctx.registry.kick_all(Kick::Shutdown);
    tracker.close();
    if tokio::time::timeout(CONNECTIONS_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still closing at shutdown");
    }
    if let Some(store) = &ctx.router.store {
        if tokio::time::timeout(STORE_GRACE, store.close())
            .await
            .is_err()
        {
            tracing::error!("persistence did not finish its last writes in time");
        }
    }
    if let Some(platform) = &ctx.platform {
        platform.close().await;
    }
    tracing::info!("broker stopped");
}

/// Stops a running broker from anywhere (cheap to clone).
#[derive(Debug, Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

/// Reads a running broker's counters from another task (cheap to clone).
#[derive(Debug, Clone)]
pub struct StatsHandle(Arc<BrokerContext>);

impl StatsHandle {
    pub fn get(&self) -> Stats {
        self.0.stats()
    }
}

/// A started broker. Dropping it stops the broker (without waiting).
#[derive(Debug)]
pub struct RunningBroker {
    local_addrs: Vec<SocketAddr>,
    ctx: Arc<BrokerContext>,
    done: Option<JoinHandle<()>>,
    config: Config,
}

impl RunningBroker {
    /// The address of the first listener (with the real port when it was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs[0]
    }

    /// The addresses of all listeners, in configuration order (`--listen` ones last).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn stats(&self) -> Stats {
        self.ctx.stats()
    }

    /// Applies a new configuration's password file and ACL (both read and checked before
    /// either is replaced; on any error the running ones stay). Connected clients keep
    /// their connection; the new ACL governs their next publish, subscribe and delivery.
    /// Returns the other settings that differ, which take effect only at a restart.
    pub fn reload(&mut self, config: Config) -> Result<Vec<&'static str>, BrokerError> {
        let config = checked(config)?;
        let auth = load_auth(&config)?;
        self.ctx.passwords.store(auth.passwords);
        self.ctx.router.acl.store(auth.acl);
        let old = &self.config;
        let differs = [
            ("listeners", old.listeners != config.listeners),
            (
                "allow_anonymous",
                old.allow_anonymous != config.allow_anonymous,
            ),
            ("limits", old.limits != config.limits),
            (
                "auth.login_backoff",
                old.auth.login_backoff != config.auth.login_backoff,
            ),
            ("persistence", old.persistence != config.persistence),
            ("sys_interval", old.sys_interval != config.sys_interval),
            ("platform", old.platform != config.platform),
            ("log", old.log != config.log),
            ("metrics", old.metrics != config.metrics),
        ];
        let restart_needed = differs
            .into_iter()
            .filter_map(|(key, differs)| differs.then_some(key))
            .collect();
        // The backoff settings stay as started (a restart applies them).
        let login_backoff = self.config.auth.login_backoff.clone();
        self.config.auth = AuthConfig {
            login_backoff,
            ..config.auth
        };
        Ok(restart_needed)
    }

    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.ctx.clone())
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.ctx.shutdown.clone())
    }

    /// Waits until the broker has stopped (after a [`ShutdownHandle::shutdown`]).
    pub async fn stopped(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }

    /// Stops accepting, closes every connection, commits the last writes, and returns when
    /// that is done.
    pub async fn shutdown(mut self) {
        self.ctx.shutdown.cancel();
        self.stopped().await;
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        self.ctx.shutdown.cancel();
    }
}
