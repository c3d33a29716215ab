//! What every connection task shares: the router, the sessions, authentication and limits.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use fieldbridge_service::LogThrottle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::PasswordFile;
use crate::backoff::LoginBackoff;
use crate::config::{AnonymousPolicy, Limits};
use crate::metrics::{Metrics, Stats};
use crate::registry::Registry;
use crate::router::Router;

/// Password checks running at once (each costs tens of milliseconds and ~19 MiB).
pub(crate) const CONCURRENT_PASSWORD_CHECKS: usize = 2;

#[derive(Debug)]
pub(crate) struct BrokerContext {
    pub router: Router,
    pub registry: Registry,
    /// Replaced whole when the password file is reloaded.
    pub passwords: ArcSwapOption<PasswordFile>,
    /// The IoT platform mode, when configured.
    pub platform: Option<Arc<crate::platform::Platform>>,
    pub anonymous: AnonymousPolicy,
    pub limits: Limits,
    /// MQTT 5 Response Information prefix (`response_information` in the configuration).
    pub response_information: Option<String>,
    pub metrics: Arc<Metrics>,
    pub password_checks: Semaphore,
    /// Failed logins by address and user name.
    pub logins: LoginBackoff,
    /// Logins refused during a backoff, logged at a bounded rate.
    pub login_refusals: LogThrottle,
    /// Clients closed because persistence failed: every publisher while the disk is full.
    pub durability_closes: LogThrottle,
    pub shutdown: CancellationToken,
    pub started: Instant,
}

impl BrokerContext {
    /// Largest packet accepted: a maximal payload with a maximal topic and headers.
    pub fn max_packet_size(&self) -> usize {
        match self.limits.max_packet_size {
            Some(size) => usize::try_from(size.bytes()).unwrap_or(usize::MAX),
            // Fixed header, topic, packet identifier, and as much again for properties.
            None => self.limits.max_payload + 5 + 2 * (2 + usize::from(u16::MAX)) + 2,
        }
    }

    /// Milliseconds since the broker started (the clock of keepalive checks).
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn stats(&self) -> Stats {
        let metrics = &self.metrics;
        // One lock at a time, each released before the next: a read guard kept while
        // taking another read of the same lock waits behind a queued writer, which
        // waits for the first guard.
        let subscriptions = self.router.subscriptions.read().len() as u64;
        let (retained_messages, retained_refused) = {
            let retained = self.router.retained.read();
            (retained.len() as u64, retained.refused())
        };
        Stats {
            uptime_secs: self.started.elapsed().as_secs(),
            clients_connected: Metrics::load(&metrics.clients_connected),
            clients_total: self.registry.len() as u64,
            messages_received: Metrics::load(&metrics.messages_received),
            messages_sent: Metrics::load(&metrics.messages_sent),
            bytes_received: Metrics::load(&metrics.bytes_received),
            bytes_sent: Metrics::load(&metrics.bytes_sent),
            messages_dropped: Metrics::load(&metrics.messages_dropped),
            messages_oversized: Metrics::load(&metrics.messages_oversized),
            slow_subscribers: Metrics::load(&metrics.slow_subscribers),
            subscriptions,
            retained_messages,
            retained_refused,
            persistence_write_failures: self.router.persistence_write_failures(),
        }
    }
}
