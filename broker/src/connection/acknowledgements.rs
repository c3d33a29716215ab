//! Acknowledgements: PUBACK, PUBREC and PUBCOMP of messages sent to the client, PUBREL of
//! QoS 2 messages it sent.

use std::future::Future;

use super::{Connection, End};
use crate::persistence::{NotDurable, Op};
use crate::session::Acked;
use fieldbridge_mqtt::codec::{Packet, PubComp, PubRel, ReasonCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Which acknowledgement of an outgoing QoS 1 or 2 message arrived.
pub(super) enum AckKind {
    /// PUBACK
    Ack,
    /// PUBREC; `refused` when an MQTT 5 client refused the message (the exchange ends).
    Rec { refused: bool },
    /// PUBCOMP
    Comp,
}

impl Connection {
    pub(super) async fn on_ack(&mut self, pkid: u16, kind: AckKind) -> Result<(), End> {
        let mut permit = self.reserve_durable(1).await?;
        {
            let mut inner = self.session.inner.lock();
            if !inner.is_linked_to(&self.signal) {
                return Ok(());
            }
            let acked = match kind {
                AckKind::Ack => inner.state.puback(pkid),
                AckKind::Rec { refused } => inner.state.pubrec(pkid, refused),
                AckKind::Comp => inner.state.pubcomp(pkid),
            };
            let client_id = self.session.client_id.clone();
            let op = match acked {
                Acked::Completed { seq } => Some(Op::Completed { client_id, seq }),
                Acked::Released { seq } => Some(Op::Released { client_id, seq }),
                Acked::Unknown => {
                    tracing::debug!(client_id = %self.session.client_id, pkid, ?kind, "acknowledgement of nothing in flight");
                    None
                }
                Acked::WrongKind => {
                    return Err(End::protocol(
                        ReasonCode::ProtocolError,
                        format!("acknowledgement of the wrong kind for packet {pkid}"),
                    ))
                }
            };
            if let (Some(op), Some(permit)) = (op, permit.as_mut().and_then(Iterator::next)) {
                permit.send(op);
            }
        }
        drop(permit);
        if kind == (AckKind::Rec { refused: false }) {
            self.write_packet(&Packet::PubRel(PubRel::new(pkid)));
        }
        Ok(())
    }

    pub(super) async fn on_pubrel(&mut self, pkid: u16) -> Result<(), End> {
        let released = self.session.inner.lock().state.incoming_pubrel(pkid);
        if released && self.persists() {
            if let Err(error) = self.store_release(pkid).await {
                // Still held: the client sends PUBREL again after reconnecting. Answered
                // now, a stored identifier that is reused after a restart would make the
                // new message pass for a copy of the old one.
                self.session.inner.lock().state.incoming_qos2(pkid);
                return Err(error.into());
            }
        }
        // MQTT 5 says when nothing awaited this PUBREL; 3.1.1 completes it all the same.
        let reason = if released || !self.peer.version.is_v5() {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        self.write_packet(&Packet::PubComp(PubComp::with_reason(pkid, reason)));
        Ok(())
    }

    /// Forgets durably that `pkid` awaited PUBREL. The future holds the store only: a
    /// connection is not `Sync`.
    fn store_release(&self, pkid: u16) -> impl Future<Output = Result<(), NotDurable>> + Send + '_ {
        let store = self.durable_store();
        let client_id = self.session.client_id.clone();
        async move {
            let Some(store) = store else {
                return Ok(());
            };
            let since = store.mark();
            store.send(Op::IncomingReleased { client_id, pkid }).await?;
            store.barrier_since(since).await
        }
    }
}
