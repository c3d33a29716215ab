//! Sessions by client id, and the link between a session and the connection serving it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use bytestring::ByteString;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc::PermitIterator;
use tokio::sync::Notify;

use crate::persistence::Op;
use crate::session::SessionState;
use crate::subscriptions::SubscriptionTree;

/// Why a connection was told to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kick {
    /// Another connection took the client id over.
    TakenOver = 1,
    /// The broker is shutting down.
    Shutdown = 2,
}

/// Wakes a connection task: messages to send, or an order to end.
#[derive(Debug, Default)]
pub(crate) struct ConnectionSignal {
    pub notify: Notify,
    kick: AtomicU8,
}

impl ConnectionSignal {
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    pub fn kick(&self, why: Kick) {
        self.kick.store(why as u8, Ordering::Release);
        self.notify.notify_one();
    }

    pub fn kicked(&self) -> Option<Kick> {
        match self.kick.load(Ordering::Acquire) {
            1 => Some(Kick::TakenOver),
            2 => Some(Kick::Shutdown),
            _ => None,
        }
    }
}

/// The connection currently serving a session.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub connection_id: u64,
    pub signal: Arc<ConnectionSignal>,
}

#[derive(Debug)]
pub(crate) struct SessionInner {
    pub state: SessionState,
    pub link: Option<Link>,
    /// The user name of the connection (for ACL checks on delivery).
    pub username: Option<ByteString>,
    /// Set when the session ended (clean session over, or replaced): nothing may be added.
    pub discarded: bool,
}

impl SessionInner {
    pub fn is_linked_to(&self, connection_id: u64) -> bool {
        self.link
            .as_ref()
            .is_some_and(|link| link.connection_id == connection_id)
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

pub(crate) type Tree = RwLock<SubscriptionTree<Arc<Session>>>;

/// Result of [`Registry::attach`].
pub(crate) struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the broker holds its maximum number of sessions")]
pub(crate) struct RegistryFull;

#[derive(Debug)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<ByteString, Arc<Session>>>,
    next_id: AtomicU64,
    max_sessions: usize,
}

impl Registry {
    pub fn new(max_sessions: usize) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
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
        username: Option<ByteString>,
    ) -> Arc<Session> {
        Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            client_id,
            persistent,
            inner: Mutex::new(SessionInner {
                state: SessionState::new(),
                link,
                username,
                discarded: false,
            }),
        })
    }

    /// Gives `client_id` a session served by `link`: the persistent session it left if it
    /// asks to resume one, a new session otherwise. A connection still serving the client id
    /// is told to end (takeover); a session that does not carry over is discarded.
    /// `permit` (one op of room in the persistence channel, when there is persistence)
    /// records the change durably in the same order as it happens here.
    pub fn attach(
        &self,
        client_id: ByteString,
        clean_session: bool,
        link: Link,
        username: Option<ByteString>,
        tree: &Tree,
        mut permit: Option<PermitIterator<'_, Op>>,
    ) -> Result<Attached, RegistryFull> {
        let mut sessions = self.sessions.lock();
        if let Some(existing) = sessions.get(&client_id).cloned() {
            let mut inner = existing.inner.lock();
            if let Some(old) = inner.link.take() {
                old.signal.kick(Kick::TakenOver);
            }
            if !clean_session && existing.persistent {
                inner.link = Some(link);
                inner.username = username;
                return Ok(Attached {
                    session: existing.clone(),
                    session_present: true,
                });
            }
            drop(inner);
            sessions.remove(&client_id);
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
        let session = self.new_session(client_id.clone(), !clean_session, Some(link), username);
        if session.persistent {
            if let Some(permit) = permit.as_mut().and_then(Iterator::next) {
                permit.send(Op::Session {
                    client_id: client_id.clone(),
                });
            }
        }
        sessions.insert(client_id, session.clone());
        Ok(Attached {
            session,
            session_present: false,
        })
    }

    /// Ends a clean session whose connection closed, unless another connection already
    /// replaced it.
    pub fn remove_clean(&self, session: &Arc<Session>, tree: &Tree) {
        let mut sessions = self.sessions.lock();
        if sessions
            .get(&session.client_id)
            .is_some_and(|current| Arc::ptr_eq(current, session))
        {
            sessions.remove(&session.client_id);
        }
        drop(sessions);
        discard(session, tree);
    }

    /// Adds a persistent session read from storage (no connection yet).
    pub fn restore(&self, client_id: ByteString, state: SessionState) -> Arc<Session> {
        let session = self.new_session(client_id.clone(), true, None, None);
        session.inner.lock().state = state;
        self.sessions.lock().insert(client_id, session.clone());
        session
    }

    /// Tells every connected client's connection to end.
    pub fn kick_all(&self, why: Kick) {
        for session in self.sessions.lock().values() {
            if let Some(link) = &session.inner.lock().link {
                link.signal.kick(why);
            }
        }
    }
}

/// Marks a session ended and removes its subscriptions from the tree.
fn discard(session: &Arc<Session>, tree: &Tree) {
    let filters: Vec<ByteString> = {
        let mut inner = session.inner.lock();
        inner.discarded = true;
        inner.link = None;
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
