//! The task that alone polls the client's event loop (never cancelled, so no packet is
//! lost halfway through a write) and hands the session what it needs to know, in batches.

use rumqttc::LastWill;
use tokio::sync::mpsc;

use super::link::{EventLoop, LinkError, LinkEvent};

/// What the driver reports from the event loop.
#[derive(Debug)]
pub(super) enum DriverEvent {
    Link(LinkEvent),
    /// The connection failed or ended; the driver waits for a [`Resume`] before the
    /// next attempt.
    Lost(LinkError),
}

/// Go ahead with the next connection attempt, with this will from now on (if any).
pub(super) type Resume = Option<LastWill>;

/// A batch of driver events, in the order the client produced them.
pub(super) type DriverBatch = Vec<DriverEvent>;

/// Polls `eventloop` until the session is gone; with `wait_first`, the first
/// connection also waits for a [`Resume`].
///
/// The session, not rumqttc, decides what is resent after a reconnect (rows from the
/// queue, so that a PUBACK always names a row), and a burst of PUBACKs should wake it
/// once: both need the event loop's internal buffers ([`EventLoop::buffered`]; a lost
/// connection takes rumqttc's replays with it).
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
        if let Some(will) = will {
            eventloop.set_will(will);
        }
    }
    loop {
        let (first, failure) = match eventloop.poll().await {
            Ok(event) => (event, None),
            Err(error) => (None, Some(error)),
        };
        // rumqttc reads up to ten packets at once and hands them out one per poll;
        // take the ones already buffered along, so that a burst of PUBACKs wakes the
        // session once.
        let mut batch: DriverBatch = first
            .into_iter()
            .chain(eventloop.buffered())
            .map(DriverEvent::Link)
            .collect();
        match failure {
            None => {
                // Once the clean start is done, later connections keep the session again.
                if eventloop.clean_start()
                    && batch
                        .iter()
                        .any(|event| matches!(event, DriverEvent::Link(LinkEvent::ConnAck { .. })))
                {
                    eventloop.set_clean_start(false);
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
                if error.oversized().is_some() {
                    eventloop.set_clean_start(true);
                }
                // Events read together with the failure (acknowledgements among them)
                // are real: they go ahead of the loss.
                batch.push(DriverEvent::Lost(error));
                if events.send(batch).await.is_err() {
                    return;
                }
                let Some(will) = resume.recv().await else {
                    return;
                };
                // Requests the session queued before it learnt of the loss are stale.
                eventloop.forget_stale_requests();
                if let Some(will) = will {
                    eventloop.set_will(will);
                }
            }
        }
    }
}
