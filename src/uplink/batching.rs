//! rumqttc 0.25's 3.1.1 event loop takes one request per poll and flushes the socket
//! after each, so a session publishing a window of rows makes a write (and wakes the
//! broker) per row. This loop, used once rumqttc has connected, takes every request
//! waiting, writes them into rumqttc's buffer through its own state machine and
//! flushes once. rumqttc's `poll` still makes each connection (TCP, TLS, WebSocket,
//! CONNECT/CONNACK).

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use rumqttc::{ConnectionError, Event, PingReq, QoS, Request};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

/// Requests taken off the channel at once.
const BATCH: usize = 64;

pub(super) struct Batching {
    eventloop: rumqttc::EventLoop,
    requests: mpsc::Receiver<Request>,
    /// Taken off the channel and not yet written: a QoS 1 publish waits while rumqttc
    /// holds a packet id collision, and everything after it keeps its place.
    held: VecDeque<Request>,
    ping: Pin<Box<Sleep>>,
}

impl Batching {
    pub(super) fn new(eventloop: rumqttc::EventLoop, requests: mpsc::Receiver<Request>) -> Self {
        Batching {
            eventloop,
            requests,
            held: VecDeque::new(),
            ping: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    pub(super) fn eventloop(&mut self) -> &mut rumqttc::EventLoop {
        &mut self.eventloop
    }

    pub(super) fn options(&self) -> &rumqttc::MqttOptions {
        &self.eventloop.mqtt_options
    }

    /// The next event; connects first when there is no connection.
    pub(super) async fn poll(&mut self) -> Result<Event, ConnectionError> {
        if self.eventloop.network.is_none() {
            let connected = self.eventloop.poll().await;
            if connected.is_ok() {
                self.next_ping();
            }
            return connected;
        }
        loop {
            if let Some(event) = self.eventloop.state.events.pop_front() {
                return Ok(event);
            }
            if let Err(error) = self.exchange().await {
                // As rumqttc does: the connection is dropped, unacknowledged publishes
                // move to its replay list (which the driver clears).
                self.eventloop.clean();
                return Err(error);
            }
        }
    }

    /// Requests the session queued before the connection was lost.
    pub(super) fn forget_stale_requests(&mut self) {
        self.held.clear();
        while self.requests.try_recv().is_ok() {}
    }

    fn next_ping(&mut self) {
        let keep_alive = self.eventloop.mqtt_options.keep_alive();
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
    async fn exchange(&mut self) -> Result<(), ConnectionError> {
        let timeout = Duration::from_secs(self.eventloop.network_options.connection_timeout());
        let eventloop = &mut self.eventloop;
        let network = eventloop.network.as_mut().expect("connected");
        let take = self.held.is_empty();
        let mut ping = false;
        tokio::select! {
            read = network.readb(&mut eventloop.state) => read?,
            request = self.requests.recv(), if take => {
                let Some(request) = request else {
                    return Err(ConnectionError::RequestsDone);
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
            self.held.push_front(Request::PingReq(PingReq));
        }
        let eventloop = &mut self.eventloop;
        let network = eventloop.network.as_mut().expect("connected");
        let write = async {
            while let Some(request) = self.held.pop_front() {
                let waits = eventloop.state.collision.is_some()
                    && matches!(&request, Request::Publish(p) if p.qos != QoS::AtMostOnce);
                if waits {
                    self.held.push_front(request);
                    break;
                }
                if let Some(packet) = eventloop.state.handle_outgoing_packet(request)? {
                    network.write(packet).await?;
                }
            }
            network.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(written) => Ok(written?),
            Err(_) => Err(ConnectionError::FlushTimeout),
        }
    }
}
