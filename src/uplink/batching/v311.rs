//! A 3.1.1 connection: rumqttc's event loop connects; its public state machine and
//! network carry the batches.

use std::time::Duration;

use rumqttc::{ConnectionError, Event, EventLoop, PingReq, QoS, Request};
use tokio::time::error::Elapsed;

use super::Connection;

pub(in crate::uplink) struct V311(pub(in crate::uplink) EventLoop);

impl Connection for V311 {
    type Request = Request;
    type Event = Event;
    type Error = ConnectionError;

    fn connected(&self) -> bool {
        self.0.network.is_some()
    }

    async fn connect(&mut self) -> Result<Event, ConnectionError> {
        self.0.poll().await
    }

    fn next_event(&mut self) -> Option<Event> {
        self.0.state.events.pop_front()
    }

    async fn read(&mut self) -> Result<(), ConnectionError> {
        let eventloop = &mut self.0;
        let network = eventloop.network.as_mut().expect("connected");
        Ok(network.readb(&mut eventloop.state).await?)
    }

    fn held_back(&self, request: &Request) -> bool {
        self.0.state.collision.is_some()
            && matches!(request, Request::Publish(p) if p.qos != QoS::AtMostOnce)
    }

    async fn write(&mut self, request: Request) -> Result<(), ConnectionError> {
        let eventloop = &mut self.0;
        if let Some(packet) = eventloop.state.handle_outgoing_packet(request)? {
            let network = eventloop.network.as_mut().expect("connected");
            network.write(packet).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ConnectionError> {
        let network = self.0.network.as_mut().expect("connected");
        Ok(network.flush().await?)
    }

    fn ping() -> Request {
        Request::PingReq(PingReq)
    }

    fn keep_alive(&self) -> Duration {
        self.0.mqtt_options.keep_alive()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.0.network_options.connection_timeout())
    }

    fn timed_out(_: Elapsed) -> ConnectionError {
        ConnectionError::FlushTimeout
    }

    fn requests_done() -> ConnectionError {
        ConnectionError::RequestsDone
    }

    fn drop_connection(&mut self) {
        // Unacknowledged publishes move to rumqttc's replay list, which is cleared.
        self.0.clean();
        self.0.pending.clear();
        self.0.state.collision = None;
    }
}
