//! SUBSCRIBE and UNSUBSCRIBE: the session's subscriptions, the shared tree, their durable
//! record, and retained messages for new subscriptions.

use super::{Connection, End};
use crate::persistence::Op;
use fieldbridge_mqtt::codec::{
    Packet, SubAck, Subscribe, SubscribeReturnCode, UnsubAck, Unsubscribe,
};
use fieldbridge_mqtt::topic::level_count;

/// Filters handled per reservation of room in the persistence channel.
const FILTERS_PER_BATCH: usize = 512;

impl Connection {
    pub(super) async fn on_subscribe(&mut self, subscribe: Subscribe) -> Result<(), End> {
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        let mut granted = Vec::new();
        // Only failures after this count against these subscriptions' records.
        let since = self.durable_store().map(|store| store.mark());
        for chunk in subscribe.filters.chunks(FILTERS_PER_BATCH) {
            let mut permits = self.reserve_durable(chunk.len()).await?;
            for filter in chunk {
                // Before the platform rewrites it: the limit is on what the client sent.
                let levels = level_count(&filter.filter);
                if levels > self.ctx.limits.max_topic_levels {
                    tracing::info!(client_id = %self.session.client_id, levels, max = self.ctx.limits.max_topic_levels, "subscription refused: too many topic levels");
                    return_codes.push(SubscribeReturnCode::Failure);
                    continue;
                }
                let mapped;
                let filter = match self.platform.as_deref().map(|c| c.subscription(filter)) {
                    None => filter,
                    Some(Ok(platform_filter)) => {
                        mapped = platform_filter;
                        &mapped
                    }
                    Some(Err(refusal)) => {
                        tracing::info!(client_id = %self.session.client_id, filter = %filter.filter, %refusal, "subscription refused by the platform");
                        return_codes.push(SubscribeReturnCode::Failure);
                        continue;
                    }
                };
                let allowed = self.acl_allows(|acl, who| acl.can_subscribe(who, &filter.filter));
                if !allowed {
                    tracing::info!(client_id = %self.session.client_id, filter = %filter.filter, "subscription refused by the ACL");
                    return_codes.push(SubscribeReturnCode::Failure);
                    continue;
                }
                let mut inner = self.session.inner.lock();
                let known = inner.state.subscriptions().contains_key(&filter.filter);
                if inner.discarded
                    || (!known
                        && inner.state.subscriptions().len()
                            >= self.ctx.limits.max_subscriptions_per_session)
                {
                    return_codes.push(SubscribeReturnCode::Failure);
                    continue;
                }
                inner
                    .state
                    .add_subscription(filter.filter.clone(), filter.qos);
                self.ctx.router.subscriptions.write().subscribe(
                    &filter.filter,
                    self.session.id,
                    filter.qos,
                    self.session.clone(),
                );
                if let Some(permit) = permits.as_mut().and_then(Iterator::next) {
                    permit.send(Op::Subscribe {
                        client_id: self.session.client_id.clone(),
                        filter: filter.filter.clone(),
                        qos: filter.qos,
                    });
                }
                drop(inner);
                return_codes.push(SubscribeReturnCode::Success(filter.qos));
                granted.push((filter.filter.clone(), filter.qos));
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
        }));
        for (filter, qos) in granted {
            self.ctx
                .router
                .deliver_retained(&self.session, &filter, qos)
                .await?;
        }
        Ok(())
    }

    pub(super) async fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Result<(), End> {
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
                    Some(None) => continue,
                };
                let mut inner = self.session.inner.lock();
                if inner.state.remove_subscription(filter) {
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
                }
            }
        }
        self.write_packet(&Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)));
        Ok(())
    }
}
