//! rumqttc 0.25's event loops take one request per poll and flush the socket after
//! each, so a session publishing a window of rows makes a write (and wakes the broker)
//! per row. This loop takes every request waiting, writes them into one buffer through
//! rumqttc's state machine of the session's MQTT version and flushes once.
//!
//! A [`Connection`] is one version's connection under this loop: for 3.1.1, rumqttc's
//! event loop, whose `poll` makes each connection (TCP, TLS, CONNECT/CONNACK) and
//! whose network is public ([`v311`]); for MQTT 5, whose event loop keeps its network
//! private, a connection made here over rumqttc's packets and state machine ([`v5`]).

pub(super) mod v311;
pub(super) mod v5;

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{error::Elapsed, Instant, Sleep};

/// Requests taken off the channel at once.
const BATCH: usize = 64;

/// One MQTT version's connection, as the loop drives it.
pub(super) trait Connection {
    type Request;
    type Event;
    type Error;

    fn connected(&self) -> bool;
    /// Makes a connection; the first event is the CONNACK.
    async fn connect(&mut self) -> Result<Self::Event, Self::Error>;
    /// An event already read or written and not yet handed out.
    fn next_event(&mut self) -> Option<Self::Event>;
    /// Waits for packets from the broker and hands them to the state machine (which
    /// queues their events and any answer). Cancel-safe.
    async fn read(&mut self) -> Result<(), Self::Error>;
    /// Whether `request` must wait: a QoS 1 publish while rumqttc holds a packet id
    /// collision.
    fn held_back(&self, request: &Self::Request) -> bool;
    /// Hands `request` to the state machine and buffers what it sends.
    async fn write(&mut self, request: Self::Request) -> Result<(), Self::Error>;
    async fn flush(&mut self) -> Result<(), Self::Error>;
    fn ping() -> Self::Request;
    fn keep_alive(&self) -> Duration;
    /// How long a connection attempt or a flush may take.
    fn timeout(&self) -> Duration;
    fn timed_out(elapsed: Elapsed) -> Self::Error;
    fn requests_done() -> Self::Error;
    /// Drops the connection after a failure, with the publishes rumqttc would replay
    /// and any packet id collision it holds: the session, not rumqttc, resends the
    /// unacknowledged rows.
    fn drop_connection(&mut self);
}

pub(super) struct Batching<C: Connection> {
    connection: C,
    requests: mpsc::Receiver<C::Request>,
    /// Taken off the channel and not yet written: a QoS 1 publish waits while rumqttc
    /// holds a packet id collision, and everything after it keeps its place.
    held: VecDeque<C::Request>,
    ping: Pin<Box<Sleep>>,
}

impl<C: Connection> Batching<C> {
    pub(super) fn new(connection: C, requests: mpsc::Receiver<C::Request>) -> Self {
        Batching {
            connection,
            requests,
            held: VecDeque::new(),
            ping: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    pub(super) fn connection(&mut self) -> &mut C {
        &mut self.connection
    }

    /// The next event; connects first when there is no connection.
    pub(super) async fn poll(&mut self) -> Result<C::Event, C::Error> {
        if !self.connection.connected() {
            let connected = self.connection.connect().await;
            if connected.is_ok() {
                self.next_ping();
            }
            return connected;
        }
        loop {
            if let Some(event) = self.connection.next_event() {
                return Ok(event);
            }
            if let Err(error) = self.exchange().await {
                self.connection.drop_connection();
                return Err(error);
            }
        }
    }

    /// Requests the session queued before the connection was lost, and the events of
    /// that connection not yet handed out.
    pub(super) fn forget_stale_requests(&mut self) {
        self.held.clear();
        while self.requests.try_recv().is_ok() {}
        while self.connection.next_event().is_some() {}
    }

    fn next_ping(&mut self) {
        let keep_alive = self.connection.keep_alive();
        // No keep-alive: never.
        let interval = if keep_alive.is_zero() {
            Duration::from_secs(86_400 * 365)
        } else {
            keep_alive
        };
        self.ping.as_mut().reset(Instant::now() + interval);
    }

    /// Waits for packets from the broker, requests or the next ping; then writes every
    /// request that may go and flushes once.
    async fn exchange(&mut self) -> Result<(), C::Error> {
        let take = self.held.is_empty();
        let mut ping = false;
        tokio::select! {
            read = self.connection.read() => read?,
            request = self.requests.recv(), if take => {
                let Some(request) = request else {
                    return Err(C::requests_done());
                };
                self.held.push_back(request);
                while self.held.len() < BATCH {
                    match self.requests.try_recv() {
                        Ok(request) => self.held.push_back(request),
                        Err(_) => break,
                    }
                }
            }
            () = self.ping.as_mut() => ping = true,
        }
        if ping {
            // First, and not held back by a packet id collision.
            self.next_ping();
            self.held.push_front(C::ping());
        }
        let timeout = self.connection.timeout();
        let connection = &mut self.connection;
        let held = &mut self.held;
        let write = async {
            while let Some(request) = held.pop_front() {
                if connection.held_back(&request) {
                    held.push_front(request);
                    break;
                }
                connection.write(request).await?;
            }
            connection.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(written) => written,
            Err(elapsed) => Err(C::timed_out(elapsed)),
        }
    }
}
