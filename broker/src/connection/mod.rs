//! One task per client connection: the CONNECT handshake, then a loop that reads packets,
//! acts on them, and writes what the session has to send. The task owns the socket and its
//! buffers; other tasks reach it only through its session (queue + wake-up signal).

mod acknowledgements;
mod handshake;
mod held;
mod peer;
mod publish;
mod subscribe;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc::PermitIterator;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;

use crate::acl::{Acl, Identity};
use crate::context::BrokerContext;
use crate::message::Message;
use crate::metrics::LocalCounters;
use crate::persistence::{NotDurable, Op, StoreHandle};
use crate::platform::status::Action;
use crate::platform::PlatformClient;
use crate::registry::{ConnectionSignal, Kick, Session, SessionInner};
use crate::router::MatchBuffer;
use crate::session::Outgoing;
use crate::transport::{ClientStream, Upgrade};
use acknowledgements::AckKind;
use fieldbridge_mqtt::codec::{
    self, Disconnect, LastWill, Packet, PubAck, PubComp, PubRec, PubRel, Publish, QoS, ReasonCode,
};
use held::HeldPublishes;
use peer::Peer;

/// Output buffered before the task stops reading from the client and taking messages from
/// its session: a client that does not read costs at most about this much.
const HIGH_WATER: usize = 64 * 1024;
/// Free read space below which the read buffer grows before a read.
const MIN_READ_SPACE: usize = 1024;
/// Bytes read per system call when the client sends a lot.
const READ_SIZE: usize = 8 * 1024;
/// Time left to write the last bytes (a CONNACK refusal, answers before DISCONNECT).
const LINGER: Duration = Duration::from_millis(500);

/// Where the connection came in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenerInfo {
    pub local: SocketAddr,
    pub loopback: bool,
}

/// Whether the ACL (if any) lets the client of `session`, connected as `username`, receive
/// `message` now.
fn may_read(
    acl: Option<&Acl>,
    username: Option<&str>,
    session: &Session,
    message: &Message,
) -> bool {
    acl.is_none_or(|acl| {
        acl.can_read(
            Identity {
                username,
                client_id: &session.client_id,
            },
            &message.topic,
        )
    })
}

/// Why a connection ended; decides whether the will is published, and what an MQTT 5
/// client is told in the broker's DISCONNECT.
#[derive(Debug)]
enum End {
    /// DISCONNECT from the client; `with_will` for an MQTT 5 reason other than 0x00.
    Disconnect {
        with_will: bool,
    },
    Closed,
    Io(io::Error),
    /// The client broke a rule: `reason` is what a 5 client is told.
    Protocol {
        reason: ReasonCode,
        what: String,
    },
    Kicked(Kick),
    NotDurable,
}

impl End {
    fn protocol(reason: ReasonCode, what: impl Into<String>) -> Self {
        End::Protocol {
            reason,
            what: what.into(),
        }
    }

    /// The reason of the DISCONNECT an MQTT 5 client gets before the close, if any.
    fn disconnect_reason(&self) -> Option<ReasonCode> {
        match self {
            End::Disconnect { .. } | End::Closed | End::Io(_) => None,
            End::Protocol { reason, .. } => Some(*reason),
            End::Kicked(Kick::TakenOver) => Some(ReasonCode::SessionTakenOver),
            End::Kicked(Kick::Shutdown) => Some(ReasonCode::ServerShuttingDown),
            End::Kicked(Kick::KeepaliveExpired) => Some(ReasonCode::KeepAliveTimeout),
            End::Kicked(Kick::SlowSubscriber) => Some(ReasonCode::QuotaExceeded),
            End::NotDurable => Some(ReasonCode::UnspecifiedError),
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Disconnect { with_will: false } => f.write_str("DISCONNECT"),
            End::Disconnect { with_will: true } => f.write_str("DISCONNECT with will"),
            End::Closed => f.write_str("closed by the client"),
            End::Io(error) => write!(f, "I/O error: {error}"),
            End::Protocol { reason, what } => write!(f, "protocol error: {what} ({reason})"),
            End::Kicked(Kick::TakenOver) => f.write_str("taken over by a new connection"),
            End::Kicked(Kick::Shutdown) => f.write_str("broker shutdown"),
            End::Kicked(Kick::KeepaliveExpired) => f.write_str("keepalive expired"),
            End::Kicked(Kick::SlowSubscriber) => {
                f.write_str("slow subscriber: its queue held publishers back too long")
            }
            End::NotDurable => f.write_str("persistence failed"),
        }
    }
}

/// What woke the connection task. No data: it lives across the awaits of handling it, in
/// every idle connection's task.
#[derive(Clone, Copy)]
enum Event {
    Signal,
    Readable,
    Writable,
}

impl End {
    fn publishes_will(&self) -> bool {
        !matches!(
            self,
            End::Disconnect { with_will: false } | End::Kicked(Kick::Shutdown)
        )
    }
}

impl From<NotDurable> for End {
    fn from(_: NotDurable) -> Self {
        End::NotDurable
    }
}

/// A connection just accepted, with what serving it needs. Boxed: an async function keeps
/// its arguments for its whole life, and every idle connection would pay for them.
pub(crate) struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub listener: ListenerInfo,
    pub ctx: Arc<BrokerContext>,
    /// Its place under `max_connections`.
    pub slot: OwnedSemaphorePermit,
    /// TLS and WebSocket handshakes to run first (none for plain MQTT).
    pub upgrade: Option<Arc<Upgrade>>,
}

/// Serves one accepted TCP connection until it ends.
///
/// The handshake, packet handling and closing run as boxed futures: a task's memory is the
/// size of its largest state, and an idle connection should only pay for waiting.
pub(crate) async fn serve(accepted: Box<Accepted>) {
    let Some(mut connection) = Box::pin(handshake::open(accepted)).await else {
        return;
    };
    let end = connection.run().await;
    Box::pin(connection.finish(end)).await;
}

/// An accepted client. Kept small: every idle connection holds one.
struct Connection {
    /// What the client speaks, and asked of what it is sent.
    peer: Peer,
    stream: ClientStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    session: Arc<Session>,
    signal: Arc<ConnectionSignal>,
    will: Option<Box<LastWill>>,
    counters: LocalCounters,
    /// Scratch space for routing, allocated once this client publishes.
    matches: Option<Box<MatchBuffer>>,
    /// QoS 1 and 2 publishes waiting for room before their acknowledgement.
    held: HeldPublishes,
    ctx: Arc<BrokerContext>,
    _slot: OwnedSemaphorePermit,
    /// Platform mode: who the client is, its topic space and status facts.
    platform: Option<Box<PlatformClient>>,
}

impl Connection {
    async fn run(&mut self) -> End {
        if self.ctx.shutdown.is_cancelled() {
            return End::Kicked(Kick::Shutdown);
        }
        // Packets that came in the same read as the CONNECT.
        if let Some(end) = Box::pin(self.process_packets()).await {
            return end;
        }
        loop {
            if let Some(end) = self.pull_outgoing() {
                return end;
            }
            if let Some(client) = self.platform.as_deref_mut() {
                client.count(&self.counters);
            }
            self.counters.flush(&self.ctx.metrics);
            let event = match std::future::poll_fn(|cx| self.poll_event(cx)).await {
                Ok(event) => event,
                Err(error) => return End::Io(error),
            };
            match event {
                Event::Signal => {
                    if let Some(kick) = self.signal.kicked() {
                        return End::Kicked(kick);
                    }
                    if !self.held.is_empty() {
                        // Perhaps room where held publishes wait; then what was not read.
                        if let Err(end) = Box::pin(self.advance_held()).await {
                            return end;
                        }
                        if let Some(end) = Box::pin(self.process_packets()).await {
                            return end;
                        }
                    }
                }
                Event::Writable => {
                    if let Err(error) = self.write() {
                        return End::Io(error);
                    }
                }
                Event::Readable => {
                    match self.read() {
                        Ok(true) => {}
                        Ok(false) => return End::Closed,
                        Err(error) => return End::Io(error),
                    }
                    let routed_before = self.counters.messages_received;
                    if let Some(end) = Box::pin(self.process_packets()).await {
                        return end;
                    }
                    if self.counters.messages_received != routed_before {
                        // Let the subscribers just woken send before reading more: a
                        // flooding publisher would otherwise fill their queues first.
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
    }

    /// What the connection has to do next. Polled in place (no stored futures), so that a
    /// waiting connection costs little memory. Writing comes before reading: a client
    /// that floods us must still get its acknowledgements.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Event>> {
        if self.signal.poll_woken(cx) {
            return Poll::Ready(Ok(Event::Signal));
        }
        if !self.wbuf.is_empty() {
            if let Poll::Ready(ready) = self.stream.poll_write_ready(cx) {
                return Poll::Ready(ready.map(|()| Event::Writable));
            }
        }
        if self.wbuf.len() < HIGH_WATER && !self.held_full() {
            if let Poll::Ready(ready) = self.stream.poll_read_ready(cx) {
                return Poll::Ready(ready.map(|()| Event::Readable));
            }
        }
        Poll::Pending
    }

    /// Reads what the socket has; false at end of stream.
    fn read(&mut self) -> io::Result<bool> {
        if self.rbuf.capacity() - self.rbuf.len() < MIN_READ_SPACE {
            self.rbuf.reserve(READ_SIZE);
        }
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => Ok(false),
            Ok(read) => {
                self.counters.bytes_received = self
                    .counters
                    .bytes_received
                    .saturating_add(u32::try_from(read).unwrap_or(u32::MAX));
                self.signal.heard(self.ctx.now_ms());
                Ok(true)
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(error) => Err(error),
        }
    }

    fn write(&mut self) -> io::Result<()> {
        match self.stream.try_write(&self.wbuf) {
            Ok(written) => {
                self.counters.bytes_sent = self
                    .counters
                    .bytes_sent
                    .saturating_add(u32::try_from(written).unwrap_or(u32::MAX));
                self.wbuf.advance(written);
                if self.wbuf.is_empty() {
                    // Idle connections keep no buffer.
                    self.wbuf = BytesMut::new();
                }
                Ok(())
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn process_packets(&mut self) -> Option<End> {
        // Held publishes at their limit: the rest stays in the buffer until they move.
        while !self.held_full() {
            match codec::decode(
                &mut self.rbuf,
                self.peer.version,
                self.ctx.max_packet_size(),
            ) {
                Ok(Some(packet)) => {
                    if let Some(end) = self.handle(packet).await {
                        return Some(end);
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    return Some(End::protocol(error.disconnect_reason(), error.to_string()))
                }
            }
        }
        if self.rbuf.is_empty() {
            // Messages still hold slices of the old buffer; this connection lets it go.
            self.rbuf = BytesMut::new();
        }
        None
    }

    async fn handle(&mut self, packet: Packet) -> Option<End> {
        let result = match packet {
            Packet::Publish(publish) => self.on_publish(publish).await,
            Packet::PubAck(PubAck { pkid, .. }) => self.on_ack(pkid, AckKind::Ack).await,
            Packet::PubRec(PubRec { pkid, reason, .. }) => {
                self.on_ack(
                    pkid,
                    AckKind::Rec {
                        refused: reason.is_failure(),
                    },
                )
                .await
            }
            Packet::PubComp(PubComp { pkid, .. }) => self.on_ack(pkid, AckKind::Comp).await,
            Packet::PubRel(PubRel { pkid, .. }) => self.on_pubrel(pkid).await,
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe).await,
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe).await,
            Packet::PingReq => {
                self.write_packet(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => Err(self.on_disconnect(disconnect)),
            Packet::Auth(_) => Err(End::protocol(
                ReasonCode::ProtocolError,
                "AUTH without an authentication method",
            )),
            Packet::Connect(_) => Err(End::protocol(ReasonCode::ProtocolError, "second CONNECT")),
            other => Err(End::protocol(
                ReasonCode::ProtocolError,
                format!("{} is not sent by clients", other.name()),
            )),
        };
        result.err()
    }

    /// A DISCONNECT from the client. MQTT 5's may keep the will due (any reason but normal
    /// disconnection: 0x04 asks for it, errors too) and change the session's expiry, but
    /// not from 0 (a session that ends with its connection).
    fn on_disconnect(&mut self, disconnect: Disconnect) -> End {
        if let Some(&expiry) = disconnect.properties.session_expiry_interval() {
            let mut inner = self.session.inner.lock();
            if inner.expiry == 0 && expiry != 0 {
                return End::protocol(
                    ReasonCode::ProtocolError,
                    "session expiry set at DISCONNECT for a session that ends with it",
                );
            }
            inner.expiry = expiry;
        }
        End::Disconnect {
            with_will: disconnect.reason != ReasonCode::Success,
        }
    }

    /// Whether the ACL (if any) lets this client do what `check` asks.
    fn acl_allows(&self, check: impl FnOnce(&Acl, Identity<'_>) -> bool) -> bool {
        let acl = self.ctx.router.acl.load();
        let Some(acl) = acl.as_deref() else {
            return true;
        };
        let inner = self.session.inner.lock();
        check(
            acl,
            Identity {
                username: inner.username.as_deref(),
                client_id: &self.session.client_id,
            },
        )
    }

    /// The store, when this client's session outlives a restart.
    fn durable_store(&self) -> Option<&StoreHandle> {
        self.ctx
            .router
            .store
            .as_ref()
            .filter(|_| self.session.persistent)
    }

    fn persists(&self) -> bool {
        self.durable_store().is_some()
    }

    /// Room for `count` records in the persistence channel, when the session is durable.
    /// The future holds the store only: a connection is not `Sync`.
    fn reserve_durable(
        &self,
        count: usize,
    ) -> impl Future<Output = Result<Option<PermitIterator<'_, Op>>, NotDurable>> + Send {
        let store = self.durable_store();
        async move {
            match store {
                Some(store) => Ok(Some(store.reserve(count).await?)),
                None => Ok(None),
            }
        }
    }

    /// Takes what the session has to send, as far as the output buffer has room.
    fn pull_outgoing(&mut self) -> Option<End> {
        if self.wbuf.len() >= HIGH_WATER {
            return None;
        }
        let budget = HIGH_WATER - self.wbuf.len();
        let mut outgoing = Vec::new();
        let acl = self.ctx.router.acl.load();
        {
            let mut inner = self.session.inner.lock();
            if !inner.is_linked_to(&self.signal) {
                return Some(End::Kicked(self.signal.kicked().unwrap_or(Kick::TakenOver)));
            }
            if !inner.state.has_sendable(&self.ctx.router.limits) {
                return None;
            }
            let SessionInner {
                state, username, ..
            } = &mut *inner;
            let mut withheld = Vec::new();
            let mut oversized = 0;
            let limits = &self.ctx.router.limits;
            // Checked again on the way out: the ACL may have been reloaded since the
            // message was queued.
            state.poll_outgoing_where(
                &self.ctx.router.limits,
                budget,
                crate::message::unix_now_ms(),
                &mut outgoing,
                |message| {
                    if !self.peer.may_take(message) {
                        oversized += 1;
                        return false;
                    }
                    may_read(acl.as_deref(), username.as_deref(), &self.session, message)
                },
                &mut withheld,
            );
            self.forget_withheld(&withheld);
            if inner.has_room_waiters() && inner.state.has_room_for_waiters(limits) {
                inner.wake_waiters();
            }
            if oversized > 0 {
                // Counted, not an error: the client said how much it takes.
                self.ctx
                    .metrics
                    .messages_oversized
                    .fetch_add(oversized, Ordering::Relaxed);
            }
            if let Some(store) = self.durable_store() {
                // Packet identifiers only matter after a crash; a full channel skips them.
                for item in &outgoing {
                    if let Outgoing::Publish { publish, seq } = item {
                        if publish.qos != QoS::AtMostOnce {
                            store.try_send(Op::Sent {
                                client_id: self.session.client_id.clone(),
                                seq: *seq,
                                pkid: publish.pkid,
                            });
                        }
                    }
                }
            }
        }
        self.write_outgoing(outgoing);
        None
    }

    /// Drops the messages the ACL no longer lets the client read, from storage too. Call
    /// with the session locked, so that the records stay in order.
    fn forget_withheld(&self, withheld: &[u64]) {
        if withheld.is_empty() {
            return;
        }
        tracing::debug!(client_id = %self.session.client_id, count = withheld.len(), "queued messages not sent: the ACL no longer lets the client read them");
        if let Some(store) = self.durable_store() {
            // A lost record costs a second check after a restart, nothing more.
            for &seq in withheld {
                store.try_send(Op::Completed {
                    client_id: self.session.client_id.clone(),
                    seq,
                });
            }
        }
    }

    fn write_outgoing(&mut self, outgoing: Vec<Outgoing>) {
        // One allocation for the batch instead of growing the buffer packet by packet.
        let estimate: usize = outgoing
            .iter()
            .map(|item| match item {
                Outgoing::Publish { publish, .. } => {
                    publish.topic.len() + publish.payload.len() + 9
                }
                Outgoing::PubRel { .. } => 4,
            })
            .sum();
        self.wbuf.reserve(estimate);
        for item in outgoing {
            match item {
                Outgoing::Publish { publish, .. } => {
                    self.counters.messages_sent += 1;
                    self.write_publish(publish);
                }
                Outgoing::PubRel { pkid } => self.write_packet(&Packet::PubRel(PubRel::new(pkid))),
            }
        }
    }

    fn write_publish(&mut self, publish: Publish) {
        // Taken, not cloned: the topic and payload are shared by every subscriber of the
        // message, and each clone and drop is an atomic operation on their counts.
        let mut publish = match self.platform.as_deref().and_then(|c| c.outbound(&publish)) {
            Some(view) => view,
            None => publish,
        };
        self.peer.alias_outgoing(&mut publish);
        self.write_packet(&Packet::Publish(publish));
    }

    fn write_packet(&mut self, packet: &Packet) {
        if let Err(error) = codec::encode(packet, self.peer.version, &mut self.wbuf) {
            tracing::warn!(client_id = %self.session.client_id, %error, packet = packet.name(), "cannot encode packet");
        }
    }

    /// Ends the connection: last bytes out, session detached, will published if due.
    async fn finish(mut self, end: End) {
        if let Some(client) = self.platform.as_deref_mut() {
            client.count(&self.counters);
        }
        self.counters.flush(&self.ctx.metrics);
        if let Some(reason) = end
            .disconnect_reason()
            .filter(|_| self.peer.version.is_v5())
        {
            let mut disconnect = Disconnect::new(reason);
            if let End::Protocol { what, .. } = &end {
                self.peer.explain(&mut disconnect.properties, what);
            }
            self.write_packet(&Packet::Disconnect(disconnect));
        }
        match &end {
            End::Disconnect { .. }
            | End::Closed
            | End::Kicked(Kick::TakenOver | Kick::Shutdown) => {
                tracing::debug!(client_id = %self.session.client_id, reason = %end, "connection ended")
            }
            End::NotDurable => {
                if let Some(repeats) = self.ctx.durability_closes.admit() {
                    tracing::info!(client_id = %self.session.client_id, reason = %end, repeats, "connection closed")
                }
            }
            _ => {
                tracing::info!(client_id = %self.session.client_id, reason = %end, "connection closed")
            }
        }
        if !self.wbuf.is_empty() && !matches!(end, End::Io(_) | End::Closed) {
            let _ = timeout(LINGER, self.stream.write_all(&self.wbuf)).await;
        }
        let _ = self.stream.shutdown().await;
        drop(self.stream);
        let now = crate::message::unix_now_ms();
        let (ends, expiry, connections) = {
            let mut inner = self.session.inner.lock();
            let linked = inner.is_linked_to(&self.signal);
            if linked {
                let spill = self.session.persistent && self.ctx.router.store.is_some();
                inner.leave(&self.signal, now, spill);
                // Publishers waiting for room go by the rules for absent clients now.
                inner.wake_waiters();
            }
            (linked && inner.expiry == 0, inner.expiry, inner.connections)
        };
        if ends || !self.session.persistent {
            self.ctx
                .registry
                .remove_clean(&self.session, &self.ctx.router.subscriptions);
        }
        if let Some(store) = self
            .ctx
            .router
            .store
            .as_ref()
            .filter(|_| self.session.persistent)
        {
            // Lost, the record only makes the session count as absent from the next start.
            store.try_send(if ends {
                Op::DeleteSession {
                    client_id: self.session.client_id.clone(),
                }
            } else {
                Op::SessionAbsent {
                    client_id: self.session.client_id.clone(),
                    since_ms: now,
                    expiry,
                }
            });
        }
        self.ctx
            .metrics
            .clients_connected
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(client) = self.platform.take() {
            let reason = end.to_string();
            // A taken-over client is connected again: its new status stays the retained one.
            let retain = !matches!(end, End::Kicked(Kick::TakenOver));
            crate::platform::status::publish(
                &self.ctx,
                &client,
                Action::Disconnect,
                Some(&reason),
                retain,
            )
            .await;
        }
        if let Some(will) = self.will.take().filter(|_| end.publishes_will()) {
            let mut message = Message::new(will.topic, will.payload, will.qos, will.retain);
            message.set_properties(&will.properties, now);
            let delay = will.properties.will_delay_interval().copied().unwrap_or(0);
            // Published when the delay is over or the session ends, whichever is first.
            let wait = if ends || !self.session.persistent {
                0
            } else {
                delay.min(expiry)
            };
            if wait == 0 {
                let routed =
                    publish::route(&self.ctx, &mut self.matches, Arc::new(message), false).await;
                if let Err(error) = routed {
                    tracing::warn!(client_id = %self.session.client_id, %error, "will not stored durably");
                }
            } else {
                let will = Arc::new(message);
                let wait = Duration::from_secs(u64::from(wait));
                if let Some(store) = self.ctx.router.store.as_ref() {
                    // Lost, the will is not published if the broker restarts first.
                    store.try_send(Op::DelayWill {
                        client_id: self.session.client_id.clone(),
                        will: will.clone(),
                        due_ms: now.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(0)),
                    });
                }
                tokio::spawn(delayed_will(
                    self.ctx.clone(),
                    self.session.clone(),
                    connections,
                    wait,
                    will,
                ));
            }
        }
    }
}

/// Publishes a will after its delay, unless the session's client connected again first
/// (`connections` counts the connections that had resumed the session when it left).
pub(crate) async fn delayed_will(
    ctx: Arc<BrokerContext>,
    session: Arc<Session>,
    connections: u32,
    wait: Duration,
    message: Arc<Message>,
) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = ctx.shutdown.cancelled() => return,
    }
    let due = {
        let inner = session.inner.lock();
        inner.discarded || (inner.link.is_none() && inner.connections == connections)
    };
    if due {
        if let Err(error) = publish::route(&ctx, &mut None, message, false).await {
            tracing::warn!(client_id = %session.client_id, %error, "will not stored durably");
        }
        if let Some(store) = ctx.router.store.as_ref().filter(|_| session.persistent) {
            // Lost, the will is published once more after a restart.
            store.try_send(Op::ClearWill {
                client_id: session.client_id.clone(),
            });
        }
    }
}
