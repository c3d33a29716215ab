//! SUBSCRIBE and UNSUBSCRIBE: the session's subscriptions, the shared tree, their durable
//! record, and retained messages for new subscriptions.

use super::{Connection, End};
use crate::persistence::Op;
use crate::subscriptions::Subscription;
use fieldbridge_mqtt::codec::{
    Packet, ReasonCode, RetainHandling, SubAck, Subscribe, SubscribeFilter, SubscribeReturnCode,
    UnsubAck, Unsubscribe,
};
use fieldbridge_mqtt::topic::{is_shared, level_count, shared_subscription};

/// Filters handled per reservation of room in the persistence channel.
const FILTERS_PER_BATCH: usize = 512;

/// A subscription granted, and whether retained messages follow it.
struct Granted {
    filter: bytestring::ByteString,
    subscription: Subscription,
    send_retained: bool,
}

impl Connection {
    pub(super) async fn on_subscribe(&mut self, subscribe: Subscribe) -> Result<(), End> {
        let identifier = subscribe
            .properties
            .subscription_identifier()
            .copied()
            .unwrap_or(0);
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        let mut granted = Vec::new();
        // Only failures after this count against these subscriptions' records.
        let since = self.durable_store().map(|store| store.mark());
        for chunk in subscribe.filters.chunks(FILTERS_PER_BATCH) {
            let mut permits = self.reserve_durable(chunk.len()).await?;
            for filter in chunk {
                let outcome = self.subscribe_one(filter, identifier, || {
                    permits.as_mut().and_then(Iterator::next)
                });
                match outcome {
                    Ok(subscribed) => {
                        return_codes
                            .push(SubscribeReturnCode::Success(subscribed.subscription.qos));
                        granted.push(subscribed);
                    }
                    Err(reason) => return_codes.push(SubscribeReturnCode::Failure(reason)),
                }
            }
        }
        if let (Some(store), Some(since)) = (self.durable_store(), since) {
            if !granted.is_empty() {
                store.barrier_since(since).await?;
            }
        }
        self.write_packet(&Packet::SubAck(SubAck {
            pkid: subscribe.pkid,
            return_codes,
            properties: Default::default(),
        }));
        let now = crate::message::unix_now_ms();
        for subscribed in granted.into_iter().filter(|granted| granted.send_retained) {
            self.ctx
                .router
                .deliver_retained(
                    &self.session,
                    &subscribed.filter,
                    subscribed.subscription,
                    now,
                )
                .await?;
        }
        Ok(())
    }

    /// Checks and records one filter of a SUBSCRIBE; the reason code of a refusal.
    fn subscribe_one<'p>(
        &self,
        filter: &SubscribeFilter,
        identifier: u32,
        permit: impl FnOnce() -> Option<tokio::sync::mpsc::Permit<'p, Op>>,
    ) -> Result<Granted, ReasonCode> {
        let client_id = &self.session.client_id;
        // Before the platform rewrites it: the limit is on what the client sent, the
        // filter matched (without a shared subscription's `$share/<group>/`).
        let matched = shared_subscription(&filter.filter).map_or(&*filter.filter, |s| s.1);
        let levels = level_count(matched);
        if levels > self.ctx.limits.max_topic_levels {
            tracing::info!(%client_id, levels, max = self.ctx.limits.max_topic_levels, "subscription refused: too many topic levels");
            return Err(ReasonCode::TopicFilterInvalid);
        }
        if is_shared(&filter.filter) && shared_subscription(&filter.filter).is_none() {
            tracing::info!(%client_id, filter = %filter.filter, "subscription refused: malformed shared subscription");
            return Err(ReasonCode::TopicFilterInvalid);
        }
        let mapped;
        let filter = match self.platform.as_deref().map(|c| c.subscription(filter)) {
            None => filter,
            Some(Ok(platform_filter)) => {
                mapped = platform_filter;
                &mapped
            }
            Some(Err(refusal)) => {
                tracing::info!(%client_id, filter = %filter.filter, %refusal, "subscription refused by the platform");
                return Err(ReasonCode::NotAuthorized);
            }
        };
        let acl_filter = shared_subscription(&filter.filter).map_or(&*filter.filter, |s| s.1);
        if !self.acl_allows(|acl, who| acl.can_subscribe(who, acl_filter)) {
            tracing::info!(%client_id, filter = %filter.filter, "subscription refused by the ACL");
            return Err(ReasonCode::NotAuthorized);
        }
        let subscription = Subscription {
            qos: filter.qos,
            no_local: filter.no_local,
            retain_as_published: filter.retain_as_published,
            identifier,
        };
        let mut inner = self.session.inner.lock();
        let known = inner.state.subscriptions().contains_key(&filter.filter);
        if inner.discarded {
            return Err(ReasonCode::UnspecifiedError);
        }
        if !known
            && inner.state.subscriptions().len() >= self.ctx.limits.max_subscriptions_per_session
        {
            return Err(ReasonCode::QuotaExceeded);
        }
        inner
            .state
            .add_subscription(filter.filter.clone(), subscription);
        self.ctx.router.subscriptions.write().subscribe(
            &filter.filter,
            self.session.id,
            subscription,
            self.session.clone(),
        );
        if let Some(permit) = permit() {
            permit.send(Op::Subscribe {
                client_id: self.session.client_id.clone(),
                filter: filter.filter.clone(),
                subscription,
            });
        }
        let send_retained = match filter.retain_handling {
            RetainHandling::OnSubscribe => true,
            RetainHandling::OnNewSubscription => !known,
            RetainHandling::Never => false,
        };
        Ok(Granted {
            filter: filter.filter.clone(),
            subscription,
            send_retained,
        })
    }

    pub(super) async fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Result<(), End> {
        let mut reason_codes = Vec::with_capacity(unsubscribe.filters.len());
        for chunk in unsubscribe.filters.chunks(FILTERS_PER_BATCH) {
            let mut permits = self.reserve_durable(chunk.len()).await?;
            for filter in chunk {
                let mapped;
                let filter = match self.platform.as_deref().map(|c| c.unsubscription(filter)) {
                    None => filter,
                    Some(Some(platform_filter)) => {
                        mapped = platform_filter;
                        &mapped
                    }
                    Some(None) => {
                        reason_codes.push(ReasonCode::NoSubscriptionExisted);
                        continue;
                    }
                };
                let mut inner = self.session.inner.lock();
                if !inner.state.remove_subscription(filter) {
                    reason_codes.push(ReasonCode::NoSubscriptionExisted);
                    continue;
                }
                self.ctx
                    .router
                    .subscriptions
                    .write()
                    .unsubscribe(filter, self.session.id);
                if let Some(permit) = permits.as_mut().and_then(Iterator::next) {
                    permit.send(Op::Unsubscribe {
                        client_id: self.session.client_id.clone(),
                        filter: filter.clone(),
                    });
                }
                reason_codes.push(ReasonCode::Success);
            }
        }
        if !self.peer.version.is_v5() {
            reason_codes.clear();
        }
        self.write_packet(&Packet::UnsubAck(UnsubAck::new(
            unsubscribe.pkid,
            reason_codes,
        )));
        Ok(())
    }
}
