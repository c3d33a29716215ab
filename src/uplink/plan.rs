//! The validated upstream settings every session is built from.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{v5, MqttOptions, NetworkOptions, QoS, TlsConfiguration, Transport};
use rustls::ClientConfig;
use tokio::sync::mpsc;

use super::batching::v311::V311;
use super::batching::v5::V5;
use super::batching::Batching;
use super::link::{will_v5, Client, EventLoop, Protocol};
use super::profile::{JsonProfile, Profile};
use super::topics::Naming;
use super::{
    tls, BrokerUrl, DeviceIdentity, Inbound, TopicScheme, UplinkError, UplinkSettings, MAX_PAYLOAD,
};
use fieldbridge_mqtt::platform::valid_name;

/// Largest MQTT packet either way: a maximal payload plus topic and header.
pub(super) const MAX_PACKET: usize = MAX_PAYLOAD + 8 * 1024;

/// Validated settings from which every device's session is built.
pub(super) struct Plan {
    pub(super) endpoint: BrokerUrl,
    pub(super) org: Arc<str>,
    pub(super) naming: Arc<Naming>,
    pub(super) keepalive: Duration,
    pub(super) window: usize,
    pub(super) tls: Option<Arc<ClientConfig>>,
    /// Devices with a client certificate of their own: their TLS configuration.
    pub(super) device_tls: HashMap<String, Arc<ClientConfig>>,
    pub(super) connect_timeout_secs: u64,
    pub(super) reconnect: Reconnect,
    pub(super) inbound: Option<mpsc::Sender<Inbound>>,
    pub(super) command_qos: QoS,
    pub(super) max_inbound: usize,
    pub(super) protocol: Protocol,
    /// MQTT 5: how long the broker keeps the session of a disconnected device.
    pub(super) session_expiry_secs: u32,
    /// MQTT 5: the Message Expiry Interval of QoS 0 events.
    pub(super) message_expiry_secs: Option<u32>,
}

/// Reconnect delays (see [`UplinkSettings::reconnect_min`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Reconnect {
    pub(super) min: Duration,
    pub(super) max: Duration,
    pub(super) refused_max: Duration,
}

/// `duration` in whole seconds, at most `u32::MAX` (MQTT's "never").
fn whole_seconds(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

impl Plan {
    pub(super) fn new(
        settings: &UplinkSettings,
        devices: &[DeviceIdentity],
    ) -> Result<Plan, UplinkError> {
        let endpoint = settings.url.clone();
        if !valid_name(&settings.org) {
            return Err(UplinkError::Settings(format!(
                "org {:?} must be 1 to 36 characters of A-Z a-z 0-9 . _ -",
                settings.org
            )));
        }
        if !settings.keepalive.is_zero() && settings.keepalive < Duration::from_secs(1) {
            return Err(UplinkError::Settings(
                "keepalive must be 0 (off) or at least 1s".into(),
            ));
        }
        if settings.inflight == 0 {
            return Err(UplinkError::Settings("inflight must be at least 1".into()));
        }
        let mut seen = HashSet::new();
        for device in devices {
            let invalid = |reason: &str| UplinkError::Device {
                device: device.id.clone(),
                reason: reason.to_owned(),
            };
            if !valid_name(&device.id) {
                return Err(invalid(
                    "the id must be 1 to 36 characters of A-Z a-z 0-9 . _ -",
                ));
            }
            if !valid_name(&device.device_type) {
                return Err(invalid(
                    "the type must be 1 to 36 characters of A-Z a-z 0-9 . _ -",
                ));
            }
            if !seen.insert(device.id.as_str()) {
                return Err(invalid("the id is used twice"));
            }
        }
        if settings.protocol == Protocol::V5 && matches!(settings.topics, TopicScheme::Sparkplug(_))
        {
            return Err(UplinkError::Settings(
                "Sparkplug B 3.0 is specified on MQTT 3.1.1: its sessions cannot use MQTT 5".into(),
            ));
        }
        let tls = if endpoint.tls {
            Some(tls::client_config(&settings.tls)?)
        } else {
            None
        };
        let mut device_tls = HashMap::new();
        for device in devices {
            let Some(certificate) = &device.tls else {
                continue;
            };
            if !endpoint.tls {
                return Err(UplinkError::Device {
                    device: device.id.clone(),
                    reason: "a device certificate needs an mqtts:// broker url".into(),
                });
            }
            let config = tls::client_config(&settings.tls.with_certificate(certificate))?;
            device_tls.insert(device.id.clone(), config);
        }
        Ok(Plan {
            endpoint,
            org: settings.org.as_str().into(),
            naming: Arc::new(Naming::new(&settings.topics)?),
            keepalive: settings.keepalive,
            window: usize::from(settings.inflight),
            tls,
            device_tls,
            connect_timeout_secs: settings.connect_timeout.as_secs().max(1),
            reconnect: Reconnect {
                min: settings.reconnect_min,
                max: settings.reconnect_max,
                refused_max: settings.refused_reconnect_max,
            },
            inbound: settings.inbound.clone(),
            command_qos: settings.command_qos,
            max_inbound: settings.max_inbound,
            protocol: settings.protocol,
            session_expiry_secs: whole_seconds(settings.session_expiry),
            message_expiry_secs: settings.message_expiry.map(whole_seconds),
        })
    }

    /// The hooks of `device`'s session.
    pub(super) fn profile(&self, device: DeviceIdentity) -> Box<dyn Profile> {
        Box::new(JsonProfile::new(
            device,
            self.org.clone(),
            self.naming.clone(),
            self.command_qos,
            self.inbound.is_some(),
        ))
    }

    /// An MQTT client with the profile's identity, credentials and will, taking up to
    /// `requests` requests at once, in the configured MQTT version.
    pub(super) fn client(&self, profile: &mut dyn Profile, requests: usize) -> (Client, EventLoop) {
        // A profile with a connection counter sets its will once the counter is saved.
        let will = profile
            .will(0)
            .filter(|_| profile.connection_counter().is_none());
        let credentials = profile.credentials();
        let own = profile
            .scope()
            .and_then(|device| self.device_tls.get(device));
        let tls = own.or(self.tls.as_ref()).cloned();
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(self.connect_timeout_secs);
        let inflight = u16::try_from(self.window).unwrap_or(u16::MAX);
        let (host, port) = (self.endpoint.host.clone(), self.endpoint.port);
        match self.protocol {
            Protocol::V311 => {
                let mut options = MqttOptions::new(profile.client_id(), host, port);
                options
                    .set_keep_alive(self.keepalive)
                    .set_clean_session(false)
                    .set_inflight(inflight)
                    .set_max_packet_size(self.max_inbound, MAX_PACKET);
                if let Some((user, password)) = credentials {
                    options.set_credentials(user, password);
                }
                if let Some(will) = will {
                    options.set_last_will(will);
                }
                if let Some(tls) = tls {
                    options
                        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
                }
                // rumqttc's own request channel goes unused: requests reach the batching
                // loop through this one.
                let mut eventloop = rumqttc::EventLoop::new(options, 1);
                eventloop.set_network_options(network);
                let (sender, receiver) = mpsc::channel(requests);
                (
                    Client::V311(sender),
                    EventLoop::V311(Box::new(Batching::new(V311(eventloop), receiver))),
                )
            }
            Protocol::V5 => {
                let mut options = v5::MqttOptions::new(profile.client_id(), host, port);
                // Advertised as Maximum Packet Size: the broker sends nothing larger.
                let max_inbound = u32::try_from(self.max_inbound).unwrap_or(u32::MAX);
                options
                    .set_clean_start(false)
                    .set_session_expiry_interval(Some(self.session_expiry_secs))
                    .set_outgoing_inflight_upper_limit(inflight)
                    .set_max_packet_size(Some(max_inbound))
                    .set_network_options(network);
                if let Some((user, password)) = credentials {
                    options.set_credentials(user, password);
                }
                if let Some(will) = will {
                    options.set_last_will(will_v5(will));
                }
                let (sender, receiver) = mpsc::channel(requests);
                (
                    Client::V5(sender),
                    EventLoop::V5(Box::new(Batching::new(
                        V5::new(options, tls, max_inbound, self.keepalive),
                        receiver,
                    ))),
                )
            }
        }
    }
}
