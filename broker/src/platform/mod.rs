//! The IoT platform mode (`platform: { org, registry }`): devices and applications of one
//! organization authenticate by client id form and token, each device is held to its own
//! topics (rewritten between its short view and the application view), applications see
//! the whole organization, and the broker publishes their status on `mon` topics.
//!
//! Token checks cost an Argon2id verification (tens of milliseconds); a successful one is
//! remembered in a bounded in-memory cache, keyed by the stored hash and holding an
//! HMAC-SHA256 of the token under a per-process random key, so that a reconnect storm of
//! known clients costs a registry look-up and an HMAC each. A removed device or a new token
//! changes the stored hash, so the cache never outlives a registry change.

pub mod quickstart;
pub mod registry;
pub(crate) mod shared;
pub mod status;
pub mod topics;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use bytestring::ByteString;
use parking_lot::Mutex;
use ring::hmac;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::metrics::LocalCounters;
use crate::transport::Transport;
use fieldbridge_mqtt::codec::{LastWill, Publish, QoS, ReasonCode, SubscribeFilter};
use fieldbridge_mqtt::platform::{valid_name, ClientIdentity, ClientKind};
pub use fieldbridge_mqtt::platform::{DEVICE_USERNAME, MAX_PAYLOAD};
pub use registry::{PlatformRegistry, RegistryError};
use status::Totals;
use topics::{DeviceTopics, Refusal};

/// Token verifications running at once.
const CONCURRENT_TOKEN_CHECKS: usize = 2;

fn default_verified_cache() -> usize {
    10_000
}

/// `platform:` in the broker configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// The organization this broker serves; `quickstart` turns on quickstart.
    pub org: String,
    /// The SQLite registry of devices and applications (not needed for quickstart).
    pub registry: Option<PathBuf>,
    /// Successful token checks remembered (0: check every time).
    #[serde(default = "default_verified_cache")]
    pub verified_cache: usize,
}

impl PlatformConfig {
    pub fn quickstart(&self) -> bool {
        self.org == quickstart::ORG
    }

    /// What is wrong with the settings: the key and a message.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !valid_name(&self.org) {
            return Some((
                "platform.org",
                format!(
                    "invalid organization {:?} (1 to 36 of A-Z a-z 0-9 . _ -)",
                    self.org
                ),
            ));
        }
        if self.registry.is_none() && !self.quickstart() {
            return Some((
                "platform.registry",
                "the registry file is needed (except for org quickstart)".into(),
            ));
        }
        None
    }
}

/// Successful token verifications, remembered as HMACs of the token.
struct VerifiedCache {
    key: hmac::Key,
    entries: Mutex<HashMap<String, hmac::Tag>>,
    capacity: usize,
}

impl VerifiedCache {
    fn new(capacity: usize) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, &rand::random::<[u8; 32]>()));
        Self {
            key,
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn contains(&self, hash: &str, token: &[u8]) -> bool {
        let entries = self.entries.lock();
        entries
            .get(hash)
            .is_some_and(|tag| hmac::verify(&self.key, token, tag.as_ref()).is_ok())
    }

    fn remember(&self, hash: String, token: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        let tag = hmac::sign(&self.key, token);
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&hash) {
            if let Some(evicted) = entries.keys().next().cloned() {
                entries.remove(&evicted);
            }
        }
        entries.insert(hash, tag);
    }
}

/// The platform mode of a running broker.
pub(crate) struct Platform {
    org: String,
    quickstart: bool,
    registry: Option<PlatformRegistry>,
    verified: VerifiedCache,
    checks: Semaphore,
    next_member: AtomicU64,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("org", &self.org)
            .field("quickstart", &self.quickstart)
            .finish_non_exhaustive()
    }
}

/// A CONNECT, as the platform sees it.
pub(crate) struct Admission<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub will: Option<Box<LastWill>>,
    pub clean_session: bool,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub transport: Transport,
}

/// An accepted CONNECT.
pub(crate) struct Admitted {
    pub client: Box<PlatformClient>,
    /// The session's name: the client id, or a member name for scalable applications.
    pub session_name: ByteString,
    pub clean_session: bool,
    /// The will, checked and rewritten like a PUBLISH.
    pub will: Option<Box<LastWill>>,
    /// False in quickstart: the listener's anonymous policy decides.
    pub authenticated: bool,
}

/// Why a CONNECT was refused: the CONNACK code, and a reason to log (never the token).
#[derive(Debug)]
pub(crate) struct Refused {
    pub code: ReasonCode,
    pub reason: String,
}

fn refused(code: ReasonCode, reason: impl Into<String>) -> Refused {
    Refused {
        code,
        reason: reason.into(),
    }
}

impl Platform {
    pub async fn open(config: &PlatformConfig) -> Result<Self, RegistryError> {
        let registry = match &config.registry {
            Some(path) => Some(PlatformRegistry::open(path).await?),
            None => None,
        };
        Ok(Self {
            org: config.org.clone(),
            quickstart: config.quickstart(),
            registry,
            verified: VerifiedCache::new(config.verified_cache),
            checks: Semaphore::new(CONCURRENT_TOKEN_CHECKS),
            next_member: AtomicU64::new(1),
        })
    }

    /// Whether clients authenticate (everywhere but quickstart).
    pub fn authenticates(&self) -> bool {
        !self.quickstart
    }

    pub async fn close(&self) {
        if let Some(registry) = &self.registry {
            registry.close().await;
        }
    }

    /// Authenticates a CONNECT by its client id form and credentials.
    pub async fn admit(&self, admission: Admission<'_>) -> Result<Admitted, Refused> {
        use ReasonCode::{BadUserNameOrPassword, NotAuthorized};
        let identity = ClientIdentity::parse(admission.client_id)
            .map_err(|error| refused(NotAuthorized, format!("malformed client id: {error}")))?;
        if identity.org != self.org {
            return Err(refused(
                NotAuthorized,
                format!("organization {:?} is not served here", identity.org),
            ));
        }
        let authenticated = if self.quickstart {
            false
        } else {
            let (Some(username), Some(password)) = (admission.username, admission.password) else {
                return Err(refused(BadUserNameOrPassword, "no user name and token"));
            };
            self.check_credentials(&identity, username, password)
                .await?;
            true
        };
        let (session_name, clean_session) = match &identity.kind {
            ClientKind::Application { scalable: true, .. } => {
                let member = self.next_member.fetch_add(1, Ordering::Relaxed);
                // Only non-durable sessions share the load.
                (
                    ByteString::from(shared::member_name(admission.client_id, member)),
                    true,
                )
            }
            _ => (
                ByteString::from(admission.client_id),
                admission.clean_session,
            ),
        };
        let topics = match &identity.kind {
            ClientKind::Device {
                device_type,
                device_id,
            } => Some(DeviceTopics::new(device_type, device_id)),
            ClientKind::Application { .. } => None,
        };
        let client = Box::new(PlatformClient {
            identity,
            topics,
            quickstart: self.quickstart,
            username: admission.username.map(str::to_owned),
            peer: admission.peer,
            local_port: admission.local.port(),
            transport: admission.transport,
            connected_at: SystemTime::now(),
            totals: Totals::default(),
            events: quickstart::EventRate::default(),
        });
        let will = match admission.will {
            Some(will) => Some(
                client
                    .will(will)
                    .map_err(|reason| refused(NotAuthorized, reason))?,
            ),
            None => None,
        };
        Ok(Admitted {
            client,
            session_name,
            clean_session,
            will,
            authenticated,
        })
    }

    async fn check_credentials(
        &self,
        identity: &ClientIdentity,
        username: &str,
        token: &[u8],
    ) -> Result<(), Refused> {
        use ReasonCode::{BadUserNameOrPassword, NotAuthorized, ServerUnavailable};
        let Some(registry) = &self.registry else {
            return Err(refused(NotAuthorized, "no registry"));
        };
        let unavailable = |error: RegistryError| {
            refused(
                ServerUnavailable,
                format!("registry look-up failed: {error}"),
            )
        };
        // An unknown client is answered like a wrong token, after the same work (a
        // dummy hash checked instead), so that neither the code nor the time tells which
        // clients exist.
        let stored = match &identity.kind {
            ClientKind::Device {
                device_type,
                device_id,
            } => {
                if username != DEVICE_USERNAME {
                    return Err(refused(
                        BadUserNameOrPassword,
                        format!("devices authenticate as {DEVICE_USERNAME}"),
                    ));
                }
                registry
                    .device_token_hash(device_type, device_id)
                    .await
                    .map_err(unavailable)?
                    .ok_or("unknown device".to_owned())
            }
            ClientKind::Application { app_id, .. } => {
                match registry.app_by_key(username).await.map_err(unavailable)? {
                    Some((owner, hash)) if &owner == app_id => Ok(hash),
                    Some((owner, _)) => {
                        Err(format!("the API key belongs to application {owner:?}"))
                    }
                    None => Err("unknown API key".to_owned()),
                }
            }
        };
        match stored {
            Ok(hash) => {
                if self.verify(hash, token).await {
                    Ok(())
                } else {
                    Err(refused(BadUserNameOrPassword, "bad token"))
                }
            }
            Err(reason) => {
                self.verify(crate::auth::dummy_hash().to_owned(), token)
                    .await;
                Err(refused(BadUserNameOrPassword, reason))
            }
        }
    }

    async fn verify(&self, hash: String, token: &[u8]) -> bool {
        if self.verified.contains(&hash, token) {
            return true;
        }
        let Ok(_slot) = self.checks.acquire().await else {
            return false;
        };
        // A storm of one client's reconnects waits here: the first check fills the cache.
        if self.verified.contains(&hash, token) {
            return true;
        }
        let token = token.to_vec();
        let checked = tokio::task::spawn_blocking(move || {
            let valid = crate::auth::verify_password(&hash, &token);
            (valid, hash, token)
        })
        .await;
        match checked {
            Ok((true, hash, token)) => {
                self.verified.remember(hash, &token);
                true
            }
            _ => false,
        }
    }
}

/// A connected platform client: its identity, topic space and connection facts.
#[derive(Debug)]
pub(crate) struct PlatformClient {
    pub identity: ClientIdentity,
    /// A device's topic space; `None` for applications.
    topics: Option<DeviceTopics>,
    quickstart: bool,
    pub username: Option<String>,
    pub peer: SocketAddr,
    pub local_port: u16,
    pub transport: Transport,
    pub connected_at: SystemTime,
    pub totals: Totals,
    events: quickstart::EventRate,
}

/// What happens to a PUBLISH from a platform client.
pub(crate) enum Inbound {
    /// Route it (topic in the application view).
    Route(Publish),
    /// Drop it silently (quickstart's event rate).
    Drop,
    /// End the connection.
    Refuse(String),
}

impl PlatformClient {
    /// Checks and rewrites a client's PUBLISH.
    pub fn inbound(&mut self, mut publish: Publish) -> Inbound {
        if publish.payload.len() > MAX_PAYLOAD {
            return Inbound::Refuse(format!(
                "payload of {} bytes exceeds the platform's {MAX_PAYLOAD}",
                publish.payload.len()
            ));
        }
        if self.quickstart && publish.qos != QoS::AtMostOnce {
            return Inbound::Refuse("quickstart allows QoS 0 only".into());
        }
        let routed = match &self.topics {
            Some(topics) => topics.publish(&publish.topic, self.quickstart),
            None => topics::app_publish(&publish.topic, self.quickstart),
        };
        let routed = match routed {
            Ok(routed) => routed,
            Err(refusal) => {
                return Inbound::Refuse(format!("publish to {} refused: {refusal}", publish.topic))
            }
        };
        if routed.event {
            publish.retain = false;
            if self.quickstart && self.topics.is_some() && !self.events.accept(Instant::now()) {
                return Inbound::Drop;
            }
        }
        if routed.topic != *publish.topic {
            publish.topic = ByteString::from(routed.topic);
        }
        Inbound::Route(publish)
    }

    /// The broker's filter for a client's subscription, with the QoS granted.
    pub fn subscription(&self, filter: &SubscribeFilter) -> Result<SubscribeFilter, Refusal> {
        let qos = if self.quickstart {
            QoS::AtMostOnce
        } else {
            filter.qos
        };
        let mapped = match &self.topics {
            Some(topics) => ByteString::from(topics.filter(&filter.filter, self.quickstart)?),
            None => {
                topics::app_filter(&filter.filter, self.quickstart)?;
                filter.filter.clone()
            }
        };
        Ok(SubscribeFilter {
            filter: mapped,
            qos,
            ..filter.clone()
        })
    }

    /// The broker's filter for a client's UNSUBSCRIBE; `None`: nothing to remove.
    pub fn unsubscription(&self, filter: &ByteString) -> Option<ByteString> {
        match &self.topics {
            Some(topics) => topics.map_filter(filter).map(ByteString::from),
            None => Some(filter.clone()),
        }
    }

    /// A device's view of a message delivered to it; `None` when nothing changes.
    pub fn outbound(&self, publish: &Publish) -> Option<Publish> {
        let topics = self.topics.as_ref()?;
        let topic = topics.device_view(&publish.topic)?;
        Some(Publish {
            topic: ByteString::from(topic),
            ..publish.clone()
        })
    }

    /// Checks and rewrites the will of a CONNECT like a PUBLISH.
    pub fn will(&self, mut will: Box<LastWill>) -> Result<Box<LastWill>, String> {
        if self.quickstart && will.qos != QoS::AtMostOnce {
            return Err("quickstart allows QoS 0 only".into());
        }
        let routed = match &self.topics {
            Some(topics) => topics.publish(&will.topic, self.quickstart),
            None => topics::app_publish(&will.topic, self.quickstart),
        }
        .map_err(|refusal| format!("will topic {} refused: {refusal}", will.topic))?;
        if routed.event {
            will.retain = false;
        }
        will.topic = ByteString::from(routed.topic);
        Ok(will)
    }

    /// Adds a batch of the connection's counters to its totals.
    pub fn count(&mut self, counters: &LocalCounters) {
        self.totals.read_bytes += u64::from(counters.bytes_received);
        self.totals.read_messages += u64::from(counters.messages_received);
        self.totals.write_bytes += u64::from(counters.bytes_sent);
        self.totals.write_messages += u64::from(counters.messages_sent);
    }

    pub fn dropped_events(&self) -> u64 {
        self.events.dropped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_remembers_only_the_right_token_and_stays_bounded() {
        let cache = VerifiedCache::new(2);
        cache.remember("hash-1".into(), b"token-1");
        assert!(cache.contains("hash-1", b"token-1"));
        assert!(!cache.contains("hash-1", b"token-2"));
        assert!(!cache.contains("hash-2", b"token-1"));
        cache.remember("hash-2".into(), b"token-2");
        cache.remember("hash-3".into(), b"token-3");
        assert_eq!(cache.entries.lock().len(), 2);
        assert!(cache.contains("hash-3", b"token-3"));

        let off = VerifiedCache::new(0);
        off.remember("hash-1".into(), b"token-1");
        assert!(!off.contains("hash-1", b"token-1"));
    }

    #[test]
    fn config_problems() {
        let config = |org: &str, registry: Option<&str>| PlatformConfig {
            org: org.into(),
            registry: registry.map(PathBuf::from),
            verified_cache: 10,
        };
        assert_eq!(config("acme", Some("r.db")).problem(), None);
        assert_eq!(config("quickstart", None).problem(), None);
        assert_eq!(
            config("acme", None).problem().map(|(key, _)| key),
            Some("platform.registry")
        );
        assert_eq!(
            config("a:b", Some("r.db")).problem().map(|(key, _)| key),
            Some("platform.org")
        );
    }
}
