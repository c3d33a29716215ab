//! The task that alone polls rumqttc's event loop (never cancelled, so no packet is lost
//! halfway through a write) and hands the session what it needs to know, in batches.

use rumqttc::{
    ConnectionError, Event as MqttEvent, EventLoop, LastWill, Outgoing, Packet, Publish,
};
use tokio::sync::mpsc;

/// What the driver reports from rumqttc's event loop.
#[derive(Debug)]
pub(super) enum DriverEvent {
    ConnAck {
        session_present: bool,
    },
    Published(u16),
    PubAck(u16),
    Inbound(Publish),
    Disconnected,
    /// The connection failed or ended; the driver waits for a [`Resume`] before the
    /// next attempt.
    Lost(ConnectionError),
}

fn relevant(event: MqttEvent) -> Option<DriverEvent> {
    match event {
        MqttEvent::Incoming(Packet::ConnAck(ack)) => Some(DriverEvent::ConnAck {
            session_present: ack.session_present,
        }),
        MqttEvent::Incoming(Packet::PubAck(ack)) => Some(DriverEvent::PubAck(ack.pkid)),
        MqttEvent::Incoming(Packet::Publish(publish)) => Some(DriverEvent::Inbound(publish)),
        MqttEvent::Outgoing(Outgoing::Publish(pkid)) => Some(DriverEvent::Published(pkid)),
        MqttEvent::Outgoing(Outgoing::Disconnect) => Some(DriverEvent::Disconnected),
        _ => None,
    }
}

/// Go ahead with the next connection attempt, with this will from now on (if any).
pub(super) type Resume = Option<LastWill>;

/// A batch of driver events, in the order rumqttc produced them.
pub(super) type DriverBatch = Vec<DriverEvent>;

/// The only code that reaches past rumqttc's public polling API. The session, not
/// rumqttc, decides what is resent after a reconnect (rows from the queue, so that a
/// PUBACK always names a row), and a burst of PUBACKs should wake it once: both need
/// the event loop's internal buffers, which rumqttc exposes as public fields.
struct Internals<'a>(&'a mut EventLoop);

impl Internals<'_> {
    /// Events rumqttc has already read and would hand out one per poll.
    fn buffered(&mut self) -> impl Iterator<Item = MqttEvent> + '_ {
        self.0.state.events.drain(..)
    }

    /// Forgets the publishes rumqttc would replay on its own after a reconnect.
    fn forget_replays(&mut self) {
        self.0.pending.clear();
        self.0.state.collision = None;
    }

    /// Drops requests queued before the loss (stale) and their buffered events.
    fn forget_stale_requests(&mut self) {
        self.0.clean();
        self.0.pending.clear();
        self.0.state.events.clear();
    }

    fn set_clean_start(&mut self, clean: bool) {
        self.0.mqtt_options.set_clean_session(clean);
    }

    fn clean_start(&self) -> bool {
        self.0.mqtt_options.clean_session()
    }

    fn set_will(&mut self, will: Resume) {
        if let Some(will) = will {
            self.0.mqtt_options.set_last_will(will);
        }
    }
}

/// Polls `eventloop` until the session is gone; with `wait_first`, the first
/// connection also waits for a [`Resume`].
pub(super) async fn drive(
    mut eventloop: EventLoop,
    events: mpsc::Sender<DriverBatch>,
    mut resume: mpsc::Receiver<Resume>,
    wait_first: bool,
) {
    if wait_first {
        let Some(will) = resume.recv().await else {
            return;
        };
        Internals(&mut eventloop).set_will(will);
    }
    loop {
        let (first, failure) = match eventloop.poll().await {
            Ok(event) => (Some(event), None),
            Err(error) => (None, Some(error)),
        };
        let mut internals = Internals(&mut eventloop);
        // rumqttc reads up to ten packets at once and hands them out one per poll;
        // take the ones already buffered along, so that a burst of PUBACKs wakes the
        // session once.
        let mut batch: DriverBatch = first
            .into_iter()
            .chain(internals.buffered())
            .filter_map(relevant)
            .collect();
        match failure {
            None => {
                // Once the clean start is done, later connections keep the session again.
                if internals.clean_start()
                    && batch
                        .iter()
                        .any(|event| matches!(event, DriverEvent::ConnAck { .. }))
                {
                    internals.set_clean_start(false);
                }
                if !batch.is_empty() && events.send(batch).await.is_err() {
                    return;
                }
            }
            Some(error) => {
                // A packet larger than rumqttc may read is neither read nor acknowledged,
                // so a persistent session would get it again on every reconnect: the
                // next connection starts the session clean, which drops it (with
                // whatever else the broker had queued for this client).
                if oversized_inbound(&error).is_some() {
                    internals.set_clean_start(true);
                }
                // Events read together with the failure (acknowledgements among them)
                // are real: they go ahead of the loss.
                internals.forget_replays();
                batch.push(DriverEvent::Lost(error));
                if events.send(batch).await.is_err() {
                    return;
                }
                let Some(will) = resume.recv().await else {
                    return;
                };
                let mut internals = Internals(&mut eventloop);
                // Requests the session queued before it learnt of the loss are stale.
                internals.forget_stale_requests();
                internals.set_will(will);
            }
        }
    }
}

/// The size of a packet from the broker that was over the incoming limit, if that is
/// why the connection ended.
pub(super) fn oversized_inbound(error: &ConnectionError) -> Option<usize> {
    match error {
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(size),
        )) => Some(*size),
        _ => None,
    }
}
