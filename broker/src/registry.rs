//! Sessions by client id, and the link between a session and the connection serving it.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use futures::task::AtomicWaker;

use bytestring::ByteString;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc::PermitIterator;

use crate::persistence::Op;
use crate::session::SessionState;
use crate::shared_subscriptions::Subscriptions;
use crate::subscriptions::sparse_capacity;

/// Why a connection was told to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kick {
    /// Another connection took the client id over.
    TakenOver,
    /// The broker is shutting down.
    Shutdown,
    /// Nothing came from the client for 1.5 times its keepalive.
    KeepaliveExpired,
    /// Its queue stayed full for `slow_subscriber_timeout`: it holds publishers back.
    SlowSubscriber,
}

impl Kick {
    fn bit(self) -> u8 {
        match self {
            Kick::TakenOver => 0b0_0010,
            Kick::Shutdown => 0b0_0100,
            Kick::KeepaliveExpired => 0b0_1000,
            Kick::SlowSubscriber => 0b1_0000,
        }
    }
}

const WOKEN: u8 = 0b0001;

/// Wakes a connection task (messages to send, or an order to end) and tells the keepalive
/// sweeper when the client was last heard from. Small on purpose: every connection has one,
/// and the task polls it without storing a future.
#[derive(Debug)]
pub(crate) struct ConnectionSignal {
    waker: AtomicWaker,
    state: AtomicU8,
    /// Milliseconds since the broker started, at the client's last bytes.
    last_heard_ms: AtomicU64,
    /// 0: no keepalive (1.5 times the longest keepalive MQTT allows fits in 32 bits).
    timeout_ms: u32,
}

impl ConnectionSignal {
    pub fn new(timeout: Option<Duration>, now_ms: u64) -> Self {
        Self {
            waker: AtomicWaker::new(),
            state: AtomicU8::new(0),
            last_heard_ms: AtomicU64::new(now_ms),
            timeout_ms: timeout.map_or(0, |timeout| {
                u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX)
            }),
        }
    }

    pub fn wake(&self) {
        self.state.fetch_or(WOKEN, Ordering::Release);
        self.waker.wake();
    }

    pub fn kick(&self, why: Kick) {
        self.state.fetch_or(why.bit(), Ordering::Release);
        self.waker.wake();
    }

    pub fn kicked(&self) -> Option<Kick> {
        let state = self.state.load(Ordering::Acquire);
        [
            Kick::Shutdown,
            Kick::TakenOver,
            Kick::KeepaliveExpired,
            Kick::SlowSubscriber,
        ]
        .into_iter()
        .find(|kick| state & kick.bit() != 0)
    }

    /// Registers the task to wake, and consumes the wake-up if there was one: true if
    /// something happened since the last call (or the connection was kicked).
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> bool {
        self.waker.register(cx.waker());
        let state = self.state.fetch_and(!WOKEN, Ordering::AcqRel);
        state != 0
    }

    pub fn heard(&self, now_ms: u64) {
        self.last_heard_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn expired(&self, now_ms: u64) -> bool {
        self.timeout_ms != 0
            && now_ms.saturating_sub(self.last_heard_ms.load(Ordering::Relaxed))
                >= u64::from(self.timeout_ms)
    }
}

/// The connection currently serving a session (identified by its signal).
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub signal: Arc<ConnectionSignal>,
}

/// Whose a session is: the identity that created it. Only that identity resumes it; any
/// other client using the client id gets a fresh session instead, since client ids are
/// the clients' to pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    Anonymous,
    /// A user name (authenticated by the password file, or as claimed without one).
    User(ByteString),
    /// A platform client, by its client id (its credentials are bound to that id).
    Client(ByteString),
}

impl Owner {
    /// The form stored in the database.
    pub fn encode(&self) -> String {
        match self {
            Owner::Anonymous => "anonymous".to_owned(),
            Owner::User(name) => format!("user:{name}"),
            Owner::Client(id) => format!("client:{id}"),
        }
    }

    pub fn decode(text: &str) -> Option<Self> {
        if text == "anonymous" {
            return Some(Owner::Anonymous);
        }
        if let Some(name) = text.strip_prefix("user:") {
            return Some(Owner::User(name.into()));
        }
        text.strip_prefix("client:")
            .map(|id| Owner::Client(id.into()))
    }

    /// The user name the owner connects with, for ACL checks while it is away.
    fn username(&self) -> Option<Box<str>> {
        match self {
            Owner::User(name) => Some(Box::from(&**name)),
            Owner::Anonymous | Owner::Client(_) => None,
        }
    }
}

#[derive(Debug)]
pub(crate) struct SessionInner {
    pub state: SessionState,
    pub link: Option<Link>,
    /// The user name of the connection (for ACL checks on delivery).
    pub username: Option<Box<str>>,
    /// `None` for a session stored before owners were recorded: the first client to
    /// resume it becomes its owner.
    pub owner: Option<Box<Owner>>,
    /// Set when the session ended (clean session over, or replaced): nothing may be added.
    pub discarded: bool,
    /// Seconds the session outlives its connection (Session Expiry Interval; u32::MAX:
    /// forever; 0: it ends with the connection).
    pub expiry: u32,
    /// When its client left ([`crate::message::unix_now_ms`]); meaningful while `link` is
    /// `None`.
    pub absent_since_ms: u64,
    /// Connections that resumed the session: a delayed will is not published once its
    /// client came back.
    pub connections: u32,
    /// Publishers waiting for room in the queue; allocated by the first (most sessions
    /// never make a publisher wait).
    room_waiters: Option<Box<RoomWaiters>>,
}

/// The publishers waiting for room in a session's queue, woken when it drains (one entry
/// per waiting connection).
#[derive(Debug)]
struct RoomWaiters {
    signals: Vec<Arc<ConnectionSignal>>,
    /// Since when (broker clock, ms) a publisher has been waiting.
    since_ms: u64,
}

impl SessionInner {
    /// The connection of `signal` is gone: the session is absent from `now_ms` on, its
    /// queue kept in the database only when `spill` (persistent, with persistence on).
    pub fn leave(&mut self, signal: &Arc<ConnectionSignal>, now_ms: u64, spill: bool) {
        if self.is_linked_to(signal) {
            self.link = None;
            self.absent_since_ms = now_ms;
            if spill {
                self.state.spill();
            }
        }
    }

    pub fn is_linked_to(&self, signal: &Arc<ConnectionSignal>) -> bool {
        self.link
            .as_ref()
            .is_some_and(|link| Arc::ptr_eq(&link.signal, signal))
    }

    /// Has `signal` woken once the queue has room.
    pub fn wait_for_room(&mut self, signal: &Arc<ConnectionSignal>, now_ms: u64) {
        let waiters = self.room_waiters.get_or_insert_with(|| {
            Box::new(RoomWaiters {
                signals: Vec::new(),
                since_ms: now_ms,
            })
        });
        if !waiters
            .signals
            .iter()
            .any(|waiting| Arc::ptr_eq(waiting, signal))
        {
            waiters.signals.push(signal.clone());
        }
    }

    /// Whether publishers wait for room in the queue.
    pub fn has_room_waiters(&self) -> bool {
        self.room_waiters.is_some()
    }

    /// Since when (broker clock, ms) a publisher has been waiting for room, if one is.
    pub fn full_since_ms(&self) -> Option<u64> {
        self.room_waiters.as_ref().map(|waiters| waiters.since_ms)
    }

    /// Wakes the publishers waiting for room: the queue drained, or its client left (the
    /// offline rules apply now), or the session ended.
    pub fn wake_waiters(&mut self) {
        for waiting in self.room_waiters.take().into_iter().flat_map(|w| w.signals) {
            waiting.wake();
        }
    }
}

#[derive(Debug)]
pub(crate) struct Session {
    /// Unique for the broker's lifetime; keys the session in the subscription tree.
    pub id: u64,
    pub client_id: ByteString,
    /// Clean session 0: outlives its connections.
    pub persistent: bool,
    pub inner: Mutex<SessionInner>,
}

pub(crate) type Tree = RwLock<Subscriptions<Arc<Session>>>;

/// A connection asking [`Registry::attach`] for its session.
pub(crate) struct Claim {
    pub client_id: ByteString,
    /// Clean session (3.1.1) or Clean Start (5): an existing session is not resumed.
    pub clean_session: bool,
    /// The Session Expiry Interval granted.
    pub expiry: u32,
    pub link: Link,
    pub username: Option<ByteString>,
    pub owner: Owner,
}

/// Result of [`Registry::attach`].
pub(crate) struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
    /// A persistent session of another owner was discarded for this one.
    pub replaced_foreign: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the broker holds its maximum number of sessions")]
pub(crate) struct RegistryFull;

/// A session in the registry's set, found by its client id (8 bytes per entry instead of
/// a second copy of the id beside the session).
#[derive(Debug, Clone)]
struct ByClientId(Arc<Session>);

impl PartialEq for ByClientId {
    fn eq(&self, other: &Self) -> bool {
        self.0.client_id == other.0.client_id
    }
}

impl Eq for ByClientId {}

impl Hash for ByClientId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must hash as the `str` it borrows as.
        (*self.0.client_id).hash(state);
    }
}

impl Borrow<str> for ByClientId {
    fn borrow(&self) -> &str {
        &self.0.client_id
    }
}

#[derive(Debug)]
pub(crate) struct Registry {
    sessions: Mutex<HashSet<ByClientId>>,
    next_id: AtomicU64,
    max_sessions: usize,
}

impl Registry {
    pub fn new(max_sessions: usize) -> Self {
        Self {
            sessions: Mutex::new(HashSet::new()),
            next_id: AtomicU64::new(1),
            max_sessions,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    fn new_session(
        &self,
        client_id: ByteString,
        persistent: bool,
        link: Option<Link>,
        username: Option<Box<str>>,
        owner: Option<Owner>,
    ) -> Arc<Session> {
        Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            client_id,
            persistent,
            inner: Mutex::new(SessionInner {
                state: SessionState::new(),
                link,
                username,
                owner: owner.map(Box::new),
                discarded: false,
                expiry: u32::MAX,
                absent_since_ms: 0,
                connections: 0,
                room_waiters: None,
            }),
        })
    }

    /// Gives the claimed client id a session served by the claim's link: the persistent
    /// session it left if it asks to resume one and owns it, a new session otherwise. A
    /// connection still serving the client id is told to end (takeover); a session that
    /// does not carry over is discarded. `permit` (two ops of room in the persistence
    /// channel, when there is persistence) records the change durably in the same order as
    /// it happens here.
    pub fn attach(
        &self,
        claim: Claim,
        tree: &Tree,
        mut permit: Option<PermitIterator<'_, Op>>,
    ) -> Result<Attached, RegistryFull> {
        let Claim {
            client_id,
            clean_session,
            expiry,
            link,
            username,
            owner,
        } = claim;
        let mut sessions = self.sessions.lock();
        let mut replaced_foreign = false;
        if let Some(ByClientId(existing)) = sessions.get(&*client_id).cloned() {
            let mut inner = existing.inner.lock();
            if let Some(old) = inner.link.take() {
                old.signal.kick(Kick::TakenOver);
            }
            let owned = inner.owner.as_deref().is_none_or(|known| *known == owner);
            if !clean_session && existing.persistent && owned {
                // Present again (and perhaps with another expiry), and owned from now on
                // if stored before owners were.
                let claimed = inner.owner.is_none().then(|| owner.encode());
                if let Some(permit) = permit.as_mut().and_then(Iterator::next) {
                    permit.send(Op::Session {
                        client_id: client_id.clone(),
                        owner: claimed,
                        expiry,
                    });
                }
                if inner.owner.is_none() {
                    inner.owner = Some(Box::new(owner));
                }
                inner.connections += 1;
                inner.link = Some(link);
                inner.username = username.as_deref().map(Box::from);
                inner.expiry = expiry;
                return Ok(Attached {
                    session: existing.clone(),
                    session_present: true,
                    replaced_foreign: false,
                });
            }
            replaced_foreign = existing.persistent && !owned;
            drop(inner);
            sessions.remove(&*client_id);
            shrink_if_sparse(&mut sessions);
            discard(&existing, tree);
            if existing.persistent {
                if let Some(permit) = permit.as_mut().and_then(Iterator::next) {
                    permit.send(Op::DeleteSession {
                        client_id: client_id.clone(),
                    });
                }
            }
        }
        if sessions.len() >= self.max_sessions {
            return Err(RegistryFull);
        }
        let persistent = expiry > 0;
        let encoded = persistent.then(|| owner.encode());
        let session = self.new_session(
            client_id.clone(),
            persistent,
            Some(link),
            username.as_deref().map(Box::from),
            Some(owner),
        );
        session.inner.lock().expiry = expiry;
        if let Some(owner) = encoded {
            if let Some(permit) = permit.as_mut().and_then(Iterator::next) {
                permit.send(Op::Session {
                    client_id: client_id.clone(),
                    owner: Some(owner),
                    expiry,
                });
            }
        }
        sessions.insert(ByClientId(session.clone()));
        Ok(Attached {
            session,
            session_present: false,
            replaced_foreign,
        })
    }

    /// Ends a clean session whose connection closed, unless another connection already
    /// replaced it.
    pub fn remove_clean(&self, session: &Arc<Session>, tree: &Tree) {
        let mut sessions = self.sessions.lock();
        if sessions
            .get(&*session.client_id)
            .is_some_and(|current| Arc::ptr_eq(&current.0, session))
        {
            sessions.remove(&*session.client_id);
            shrink_if_sparse(&mut sessions);
        }
        drop(sessions);
        discard(session, tree);
    }

    /// Adds a persistent session read from storage (no connection yet). Until its owner
    /// connects, messages are checked against the ACL as the owner's user name.
    pub fn restore(
        &self,
        client_id: ByteString,
        state: SessionState,
        owner: Option<Owner>,
    ) -> Arc<Session> {
        let username = owner.as_ref().and_then(Owner::username);
        let session = self.new_session(client_id.clone(), true, None, username, owner);
        session.inner.lock().state = state;
        self.sessions.lock().replace(ByClientId(session.clone()));
        session
    }

    /// Removes and returns the absent sessions whose expiry passed by `now_ms` (Unix ms).
    pub fn expire_absent(&self, now_ms: u64, tree: &Tree) -> Vec<Arc<Session>> {
        let mut ended = Vec::new();
        {
            let mut sessions = self.sessions.lock();
            sessions.retain(|ByClientId(session)| {
                let inner = session.inner.lock();
                let expired = inner.link.is_none()
                    && crate::server::session_expired(inner.expiry, inner.absent_since_ms, now_ms);
                if expired {
                    ended.push(session.clone());
                }
                !expired
            });
            if !ended.is_empty() {
                shrink_if_sparse(&mut sessions);
            }
        }
        for session in &ended {
            discard(session, tree);
        }
        ended
    }

    /// Disconnects the connected clients whose queue has held publishers back for
    /// `timeout_ms`; how many.
    pub fn kick_slow(&self, now_ms: u64, timeout_ms: u64) -> u64 {
        let mut kicked = 0;
        for ByClientId(session) in self.sessions.lock().iter() {
            let inner = session.inner.lock();
            let slow = inner
                .full_since_ms()
                .is_some_and(|since| now_ms.saturating_sub(since) >= timeout_ms);
            if let Some(link) = inner.link.as_ref().filter(|_| slow) {
                tracing::warn!(client_id = %session.client_id, "slow subscriber disconnected: its queue held publishers back for slow_subscriber_timeout");
                link.signal.kick(Kick::SlowSubscriber);
                kicked += 1;
            }
        }
        kicked
    }

    /// Tells every connected client's connection to end.
    pub fn kick_all(&self, why: Kick) {
        self.for_each_link(|signal| signal.kick(why));
    }

    /// Ends the connections whose clients have been silent for too long.
    pub fn expire_silent(&self, now_ms: u64) {
        self.for_each_link(|signal| {
            if signal.expired(now_ms) {
                signal.kick(Kick::KeepaliveExpired);
            }
        });
    }

    fn for_each_link(&self, mut action: impl FnMut(&ConnectionSignal)) {
        for ByClientId(session) in self.sessions.lock().iter() {
            if let Some(link) = &session.inner.lock().link {
                action(&link.signal);
            }
        }
    }
}

/// Gives back the table of a set that many sessions have left (a connection flood).
fn shrink_if_sparse<T: Eq + Hash>(set: &mut HashSet<T>) {
    if let Some(capacity) = sparse_capacity(set.len(), set.capacity()) {
        set.shrink_to(capacity);
    }
}

/// Marks a session ended and removes its subscriptions from the tree.
fn discard(session: &Arc<Session>, tree: &Tree) {
    let filters: Vec<ByteString> = {
        let mut inner = session.inner.lock();
        inner.discarded = true;
        inner.link = None;
        inner.wake_waiters();
        inner.state.subscriptions().keys().cloned().collect()
    };
    if filters.is_empty() {
        return;
    }
    let mut tree = tree.write();
    for filter in filters {
        tree.unsubscribe(&filter, session.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(client_id: String) -> Claim {
        Claim {
            client_id: client_id.into(),
            clean_session: true,
            expiry: 0,
            link: Link {
                signal: Arc::new(ConnectionSignal::new(None, 0)),
            },
            username: None,
            owner: Owner::Anonymous,
        }
    }

    /// After a flood of clients has left, the session set gives its table back.
    #[test]
    fn session_set_shrinks_when_clients_leave() {
        let registry = Registry::new(100_000);
        let tree = Tree::default();
        let sessions: Vec<_> = (0..15_000)
            .map(|i| {
                registry
                    .attach(claim(format!("client-{i}")), &tree, None)
                    .map_or_else(|_| panic!("registry full"), |attached| attached.session)
            })
            .collect();
        assert!(registry.sessions.lock().capacity() >= 15_000);
        for session in &sessions[1..] {
            registry.remove_clean(session, &tree);
        }
        assert_eq!(registry.len(), 1);
        assert!(registry.sessions.lock().capacity() <= 2048);
    }
}
