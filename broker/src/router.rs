//! Routing: a published message goes to the retained store and to the queue of every
//! session with a matching subscription, and durably so where the publisher's
//! acknowledgement depends on it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_service::LogThrottle;

use parking_lot::RwLock;
use tokio::sync::mpsc::PermitIterator;

use arc_swap::ArcSwapOption;

use crate::acl::{Acl, Identity};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::persistence::{Mark, NotDurable, Op, StoreHandle};
use crate::registry::{ConnectionSignal, Session, SessionInner, Tree};
use crate::retained::{RetainOutcome, RetainedStore};
use crate::session::{Enqueued, SessionLimits};
use crate::subscriptions::{Matched, Subscription};
use fieldbridge_mqtt::codec::QoS;
use fieldbridge_mqtt::topic::is_shared;

/// Sessions whose queue is longer than this get their own copy of a message instead of a
/// slice of the publisher's read buffer, which a backlog would otherwise keep alive.
const SHARE_BUFFER_BELOW: usize = 64;

/// Least time between two queue-full warnings in the log.
pub(crate) const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Delivery targets handled per reservation of persistence room.
const CHUNK: usize = 1024;

/// Matches of one routing, reused between messages by each connection.
pub(crate) type MatchBuffer = Vec<Matched<Arc<Session>>>;

#[derive(Debug)]
pub(crate) struct Router {
    pub subscriptions: Tree,
    pub retained: RwLock<RetainedStore>,
    pub store: Option<StoreHandle>,
    /// Replaced whole when the ACL file is reloaded.
    pub acl: ArcSwapOption<Acl>,
    pub limits: SessionLimits,
    pub metrics: Arc<Metrics>,
    /// Queue-full warnings, for the whole broker (every drop is counted anyway).
    pub drop_warnings: LogThrottle,
    /// Platform mode: the sessions of a scalable application take its messages in turn.
    pub shared_groups: Option<crate::platform::shared::SharedGroups>,
}

/// What routing a message did: how many sessions it went to, and the deliveries still
/// waiting for room in a full queue.
#[derive(Debug, Default)]
pub(crate) struct Routed {
    pub delivered: usize,
    pub blocked: Vec<Blocked>,
}

/// A delivery waiting for room in its session's queue.
#[derive(Debug, Clone)]
pub(crate) struct Blocked {
    pub session: Arc<Session>,
    target: Target,
}

/// How one session receives a message.
#[derive(Debug, Clone)]
struct Target {
    qos: QoS,
    /// The RETAIN flag it is sent with.
    retain: bool,
    identifiers: Vec<u32>,
}

/// Persistence state of one message being delivered: room reserved in the persistence
/// channel, and the message's id once its body is stored.
struct Durable<'p, 'a> {
    permits: &'p mut PermitIterator<'a, Op>,
    message_id: Option<i64>,
}

impl Router {
    /// Whether deliveries to `session` at `qos` are written to the database.
    pub fn persists(&self, session: &Session, qos: QoS) -> bool {
        self.store.is_some() && session.persistent && qos != QoS::AtMostOnce
    }

    /// Routes a message. Returns once everything the publisher's acknowledgement depends on
    /// is durable: the message in the queues of persistent sessions and the retained store
    /// (for QoS 1 and 2); an error if that could not be stored. `force_barrier` waits for
    /// the caller's writes just before the call too (see [`StoreHandle::barrier`]).
    pub async fn publish(
        &self,
        message: Arc<Message>,
        matches: &mut MatchBuffer,
        force_barrier: bool,
        waiter: Option<&Arc<ConnectionSignal>>,
    ) -> Result<Routed, NotDurable> {
        let since = match &self.store {
            Some(store) if force_barrier => Some(store.settled_mark()),
            _ => None,
        };
        self.publish_since(message, matches, since, waiter).await
    }

    /// [`Router::publish`] for a caller that sent writes of its own after taking `since`:
    /// waits for those too, and fails if a transaction failed since.
    ///
    /// A QoS 1 or 2 message for a connected session whose queue is full is not dropped:
    /// it comes back in [`Routed::blocked`], and the session wakes `waiter` once it has
    /// room ([`Router::retry`]). Without a waiter (a will, the broker's own messages) it is
    /// dropped and counted.
    pub async fn publish_since(
        &self,
        message: Arc<Message>,
        matches: &mut MatchBuffer,
        since: Option<Mark>,
        waiter: Option<&Arc<ConnectionSignal>>,
    ) -> Result<Routed, NotDurable> {
        let mut wait = since.is_some();
        let since = since.or_else(|| self.store.as_ref().map(StoreHandle::mark));
        if message.retain {
            wait |= self.retain(&message).await? && message.qos != QoS::AtMostOnce;
        }
        // A session whose lock is taken is in use: counted as present (waiting for it
        // would invert the lock order of subscribing, session then tree).
        self.subscriptions
            .read()
            .matches(&message.topic, matches, |session| {
                session
                    .inner
                    .try_lock()
                    .is_none_or(|inner| inner.link.is_some())
            });
        if let Some(groups) = &self.shared_groups {
            groups.pick(matches);
        }
        // No Local: not back to the session that published it.
        matches.retain(|matched| !(matched.no_local && matched.id == message.publisher));
        let mut routed = Routed {
            delivered: matches.len(),
            blocked: Vec::new(),
        };
        let mut detached = None;
        for chunk in matches.chunks(CHUNK) {
            wait |= self
                .deliver_chunk(
                    &message,
                    chunk,
                    match_target,
                    &mut detached,
                    waiter,
                    &mut routed.blocked,
                )
                .await?;
        }
        matches.clear();
        match (&self.store, since) {
            (Some(store), Some(since)) if wait => store.barrier_since(since).await?,
            _ => {}
        }
        Ok(routed)
    }

    /// Tries the deliveries that were waiting for room again; those still waiting stay
    /// in `blocked`. Returns once what was queued is durable (as [`Router::publish`]).
    pub async fn retry(
        &self,
        message: &Arc<Message>,
        blocked: &mut Vec<Blocked>,
        waiter: &Arc<ConnectionSignal>,
    ) -> Result<(), NotDurable> {
        let since = self.store.as_ref().map(StoreHandle::mark);
        let pending = std::mem::take(blocked);
        let mut wait = false;
        let mut detached = None;
        for chunk in pending.chunks(CHUNK) {
            wait |= self
                .deliver_chunk(
                    message,
                    chunk,
                    |blocked, _| (&blocked.session, blocked.target.clone()),
                    &mut detached,
                    Some(waiter),
                    blocked,
                )
                .await?;
        }
        match (&self.store, since) {
            (Some(store), Some(since)) if wait => store.barrier_since(since).await,
            _ => Ok(()),
        }
    }

    /// Queues `message` for the sessions of `chunk`, durably for persistent ones (room
    /// reserved first); the deliveries waiting for room are added to `blocked`. True if a
    /// durable write was sent.
    async fn deliver_chunk<T>(
        &self,
        message: &Arc<Message>,
        chunk: &[T],
        target_of: for<'a> fn(&'a T, &Message) -> (&'a Arc<Session>, Target),
        detached: &mut Option<Arc<Message>>,
        waiter: Option<&Arc<ConnectionSignal>>,
        blocked: &mut Vec<Blocked>,
    ) -> Result<bool, NotDurable> {
        let mut permits = match &self.store {
            Some(store) => {
                let durable_count = chunk
                    .iter()
                    .map(|item| target_of(item, message))
                    .filter(|(session, target)| self.persists(session, target.qos))
                    .count();
                match durable_count {
                    0 => None,
                    count => Some(store.reserve(count + 1).await?),
                }
            }
            None => None,
        };
        let mut durable = permits.as_mut().map(|permits| Durable {
            permits,
            message_id: None,
        });
        for item in chunk {
            let (session, target) = target_of(item, message);
            if let Some(target) =
                self.deliver(session, message, detached, target, durable.as_mut(), waiter)
            {
                blocked.push(Blocked {
                    session: session.clone(),
                    target,
                });
            }
        }
        Ok(durable.is_some_and(|durable| durable.message_id.is_some()))
    }

    /// Stores or clears the retained message of the topic; true if that was written to the
    /// database.
    async fn retain(&self, message: &Message) -> Result<bool, NotDurable> {
        let stored = Arc::new(Message {
            retain: true,
            ..message.detached()
        });
        let store = self
            .store
            .as_ref()
            .filter(|_| !message.topic.starts_with("$SYS/"));
        let mut permit = match store {
            Some(store) => Some(store.reserve(1).await?),
            None => None,
        };
        let mut retained = self.retained.write();
        let op = match retained.set(stored.clone()) {
            RetainOutcome::Stored | RetainOutcome::Replaced => Op::SetRetained { message: stored },
            RetainOutcome::Cleared => Op::ClearRetained {
                topic: message.topic.clone(),
            },
            RetainOutcome::NothingToClear => return Ok(false),
            // Counted, and logged at a bounded rate, by the store.
            RetainOutcome::Full => return Ok(false),
        };
        match permit.as_mut().and_then(Iterator::next) {
            Some(permit) => {
                permit.send(op);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Queues the retained messages matching a new subscription for its session (for a
    /// shared subscription: none, as MQTT 5 section 4.8.2 says).
    pub async fn deliver_retained(
        &self,
        session: &Arc<Session>,
        filter: &str,
        subscription: Subscription,
        now_ms: u64,
    ) -> Result<(), NotDurable> {
        if is_shared(filter) {
            return Ok(());
        }
        let granted = subscription.qos;
        let since = self.store.as_ref().map(StoreHandle::mark);
        let mut found = Vec::new();
        self.retained.read().matching(filter, &mut found);
        found.retain(|message| !message.expired(now_ms));
        let mut wait = false;
        for chunk in found.chunks(CHUNK / 2) {
            let durable_count = chunk
                .iter()
                .filter(|m| self.persists(session, m.qos.min(granted)))
                .count();
            let mut permits = match &self.store {
                Some(store) if durable_count > 0 => Some(store.reserve(2 * durable_count).await?),
                _ => None,
            };
            for message in chunk {
                // Retained messages are stored detached already: no copy needed.
                let mut detached = Some(message.clone());
                let mut durable = permits.as_mut().map(|permits| Durable {
                    permits,
                    message_id: None,
                });
                let identifiers = match subscription.identifier {
                    0 => Vec::new(),
                    identifier => vec![identifier],
                };
                // Retained messages are sent as room allows: a full queue drops them.
                self.deliver(
                    session,
                    message,
                    &mut detached,
                    Target {
                        qos: message.qos.min(granted),
                        retain: true,
                        identifiers,
                    },
                    durable.as_mut(),
                    None,
                );
                wait |= durable.is_some_and(|durable| durable.message_id.is_some());
            }
        }
        match (&self.store, since) {
            (Some(store), Some(since)) if wait => store.barrier_since(since).await,
            _ => Ok(()),
        }
    }

    /// Transactions of the persistence database that failed since the start.
    pub fn persistence_write_failures(&self) -> u64 {
        self.store.as_ref().map_or(0, StoreHandle::write_failures)
    }

    /// Queues one message for one session, writing it to the database when the session
    /// is persistent (through `durable`'s reserved room, under the session lock so that the
    /// session's writes stay in order).
    fn deliver(
        &self,
        session: &Session,
        message: &Arc<Message>,
        detached: &mut Option<Arc<Message>>,
        target: Target,
        durable: Option<&mut Durable<'_, '_>>,
        waiter: Option<&Arc<ConnectionSignal>>,
    ) -> Option<Target> {
        let mut inner = session.inner.lock();
        if inner.discarded {
            return None;
        }
        if let Some(acl) = self.acl.load().as_deref() {
            let who = Identity {
                username: inner.username.as_deref(),
                client_id: &session.client_id,
            };
            if !acl.can_read(who, &message.topic) {
                return None;
            }
        }
        let online = inner.link.is_some();
        let shared = online && inner.state.queued_len() < SHARE_BUFFER_BELOW;
        let body = if shared {
            message.clone()
        } else {
            detached
                .get_or_insert_with(|| Arc::new(message.detached()))
                .clone()
        };
        let was_dropping = inner.state.is_dropping();
        let Target {
            qos,
            retain,
            ref identifiers,
        } = target;
        match inner
            .state
            .enqueue(body, qos, retain, identifiers.clone(), online, &self.limits)
        {
            Enqueued::Full => {
                if let Some(waiter) = waiter {
                    inner.wait_for_room(waiter, crate::message::unix_now_ms());
                    return Some(target);
                }
                self.count_drops(session, &inner, 1, was_dropping);
            }
            Enqueued::Queued { seq, wake, evicted } => {
                if !evicted.is_empty() {
                    self.count_drops(session, &inner, evicted.len(), was_dropping);
                    if let Some(store) = self.store.as_ref().filter(|_| session.persistent) {
                        // Lost, an evicted message comes back after a restart: once more.
                        for seq in evicted {
                            store.try_send(Op::Completed {
                                client_id: session.client_id.clone(),
                                seq,
                            });
                        }
                    }
                }
                if let Some(durable) = durable.filter(|_| self.persists(session, qos)) {
                    let message_id = match durable.message_id {
                        Some(id) => Some(id),
                        None => self.store_body(message, durable),
                    };
                    if let (Some(message_id), Some(permit)) = (message_id, durable.permits.next()) {
                        permit.send(Op::Enqueue {
                            client_id: session.client_id.clone(),
                            seq,
                            message_id,
                            qos,
                            retain,
                            identifiers: identifiers.clone(),
                        });
                    }
                }
                if wake {
                    if let Some(link) = &inner.link {
                        link.signal.wake();
                    }
                }
            }
            Enqueued::Dropped => self.count_drops(session, &inner, 1, was_dropping),
            Enqueued::Skipped => {}
        }
        None
    }

    /// Counts messages a session's full queue dropped; the first of a run is logged, at
    /// most every [`DROP_WARNING_INTERVAL`] across the broker.
    fn count_drops(
        &self,
        session: &Session,
        inner: &SessionInner,
        count: usize,
        was_dropping: bool,
    ) {
        let dropped = self
            .metrics
            .messages_dropped
            .fetch_add(count as u64, Ordering::Relaxed)
            + count as u64;
        if !was_dropping && self.drop_warnings.admit().is_some() {
            tracing::warn!(
                client_id = %session.client_id,
                queued = inner.state.queued_len(),
                session_dropped = inner.state.dropped(),
                broker_dropped = dropped,
                "session queue full: dropping messages (next warning in 10 s at the earliest)"
            );
        }
    }

    fn store_body(&self, message: &Arc<Message>, durable: &mut Durable<'_, '_>) -> Option<i64> {
        let store = self.store.as_ref()?;
        let permit = durable.permits.next()?;
        let id = store.next_message_id();
        permit.send(Op::Message {
            id,
            message: message.clone(),
        });
        durable.message_id = Some(id);
        Some(id)
    }
}

/// Where a matching subscription sends `message`, and how.
fn match_target<'a>(
    matched: &'a Matched<Arc<Session>>,
    message: &Message,
) -> (&'a Arc<Session>, Target) {
    let target = Target {
        qos: matched.qos.min(message.qos),
        retain: matched.retain_as_published && message.retain,
        identifiers: matched.identifiers.clone(),
    };
    (&matched.subscriber, target)
}
