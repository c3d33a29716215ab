//! The gateway configuration file, as typed structs. Every struct rejects unknown
//! keys; defaults live next to the fields they belong to.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::Secret;
use crate::event::Qos;
use crate::registers::{DataType, RegisterKind, WordOrder};
pub use fieldbridge_mqtt::url::BrokerUrl;
pub use fieldbridge_service::logging::{LogSection, LogTarget};
use fieldbridge_service::units::{Duration, Size};

/// The whole gateway configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewaySection,
    /// Absent: events are printed as JSON lines on stdout.
    pub upstream: Option<Upstream>,
    #[serde(default)]
    pub queue: QueueSection,
    #[serde(default)]
    pub buses: Vec<Bus>,
    #[serde(default)]
    pub devices: Vec<Device>,
    pub log: Option<LogSection>,
    /// Where to serve Prometheus metrics (`GET /metrics`), e.g. `127.0.0.1:9464`.
    pub metrics: Option<std::net::SocketAddr>,
    /// Found while loading and worth fixing, but no reason to refuse the file: client
    /// certificates that expire within 30 days.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// SQLite queue and state. A relative path is taken from the config file's directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            data_dir: default_data_dir(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/fieldbridge")
}

/// The MQTT broker every device connects to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    #[serde(deserialize_with = "broker_url")]
    pub url: BrokerUrl,
    pub org: String,
    /// MQTT keepalive; `0s` disables it.
    #[serde(default = "default_keepalive")]
    pub keepalive: Duration,
    pub tls: Option<Tls>,
    #[serde(default)]
    pub topic_scheme: TopicScheme,
    /// Topic and client id templates, only with `topic_scheme: custom`.
    pub topics: Option<TopicTemplates>,
    /// The edge node, only (and always) with `topic_scheme: sparkplug`.
    pub sparkplug: Option<SparkplugSection>,
    /// Topics of `topic_scheme: homeassistant` (optional there, refused elsewhere).
    pub homeassistant: Option<HomeAssistantSection>,
    /// Username for every device session, only with `topic_scheme: custom` (the
    /// platform scheme always uses `use-token-auth`). A template like `topics`.
    pub username: Option<String>,
    /// Most QoS 1 publishes per device session awaiting their PUBACK.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// QoS of the command subscription: 2 (default) so the broker hands each command
    /// over once; the gateway also acts on each `reqId` once.
    #[serde(
        default = "default_command_qos",
        deserialize_with = "deserialize_command_qos"
    )]
    pub command_qos: u8,
    /// How many recent command `reqId`s each device remembers (in SQLite) to act on a
    /// redelivered command only once.
    #[serde(default = "default_remembered_commands")]
    pub remembered_commands: u32,
    /// Largest packet a device session reads from the broker. A larger one cannot be read
    /// or acknowledged under MQTT 3.1.1: the session is restarted clean, dropping what the
    /// broker queued for it.
    #[serde(default = "default_max_inbound")]
    pub max_inbound: Size,
    /// MQTT version of every device session: `"3.1.1"` (default) or `"5"`.
    #[serde(default)]
    pub protocol: MqttVersion,
    /// MQTT 5: how long the broker keeps a disconnected device's session (default 1 day).
    pub session_expiry: Option<Duration>,
    /// MQTT 5: Message Expiry Interval of QoS 0 events (default: none).
    pub message_expiry: Option<Duration>,
}

/// `upstream.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum MqttVersion {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

fn default_max_inbound() -> Size {
    Size::kib(256)
}

fn default_command_qos() -> u8 {
    2
}

fn default_remembered_commands() -> u32 {
    1000
}

fn deserialize_command_qos<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    match u8::deserialize(deserializer)? {
        qos @ 0..=2 => Ok(qos),
        other => Err(de::Error::custom(format!(
            "command_qos {other} is not an MQTT QoS, expected 0, 1 or 2 (default 2)"
        ))),
    }
}

fn default_keepalive() -> Duration {
    Duration::from_secs(30)
}

fn default_max_inflight() -> u16 {
    32
}

fn broker_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BrokerUrl, D::Error> {
    String::deserialize(deserializer)?
        .parse()
        .map_err(de::Error::custom)
}

/// TLS settings of the broker connection. Relative paths are taken from the config
/// file's directory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// CA certificates (PEM) to trust; absent: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), together with `key_file`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Skip verification of the broker's certificate (testing only).
    #[serde(default)]
    pub insecure: bool,
}

/// A device's own client certificate, instead of `upstream.tls`'s (one X.509 identity
/// per device, as AWS IoT Core expects). Relative paths are taken from the config file's
/// directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicScheme {
    /// `d:<org>:<type>:<id>` client ids, `use-token-auth`, `iot-2/evt/<event>/fmt/json`.
    #[default]
    Platform,
    /// Client ids and topics from `upstream.topics`.
    Custom,
    /// One Sparkplug B edge node (`upstream.sparkplug`); devices are Sparkplug devices.
    Sparkplug,
    /// Home Assistant MQTT discovery (`upstream.homeassistant`).
    #[serde(rename = "homeassistant")]
    HomeAssistant,
}

/// `upstream.homeassistant`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantSection {
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
    #[serde(default = "default_base_topic")]
    pub base_topic: String,
}

impl Default for HomeAssistantSection {
    fn default() -> Self {
        HomeAssistantSection {
            discovery_prefix: default_discovery_prefix(),
            base_topic: default_base_topic(),
        }
    }
}

fn default_discovery_prefix() -> String {
    "homeassistant".into()
}

fn default_base_topic() -> String {
    "fieldbridge".into()
}

/// `upstream.sparkplug`: the edge node's identity.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugSection {
    pub group_id: String,
    pub edge_node_id: String,
    /// Births wait until this primary host application's STATE says online.
    pub primary_host_id: Option<String>,
}

/// Templates for `topic_scheme: custom`. Placeholders: `{org}`, `{type}`, `{device}`,
/// and `{event}` (event topic) or `{command}` (command topic, a whole topic level:
/// the gateway subscribes with `+` in its place).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicTemplates {
    #[serde(default = "default_client_id_template")]
    pub client_id: String,
    #[serde(default = "default_event_template")]
    pub event: String,
    #[serde(default = "default_command_template")]
    pub command: String,
}

impl Default for TopicTemplates {
    fn default() -> Self {
        TopicTemplates {
            client_id: default_client_id_template(),
            event: default_event_template(),
            command: default_command_template(),
        }
    }
}

fn default_client_id_template() -> String {
    "fieldbridge-{type}-{device}".into()
}

fn default_event_template() -> String {
    "fieldbridge/{type}/{device}/evt/{event}".into()
}

fn default_command_template() -> String {
    "fieldbridge/{type}/{device}/cmd/{command}".into()
}

/// The store-and-forward queue of QoS 1 events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    #[serde(default = "default_max_messages")]
    pub max_messages: u64,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: Size,
    #[serde(default)]
    pub on_full: OnFull,
    /// How long the queue gathers writes into one transaction (fewer fsyncs, at most this
    /// much more latency for QoS 1 events); `0s` commits every batch at once.
    #[serde(default = "default_commit_window")]
    pub commit_window: Duration,
}

impl Default for QueueSection {
    fn default() -> Self {
        QueueSection {
            max_messages: default_max_messages(),
            max_bytes: default_max_bytes(),
            on_full: OnFull::default(),
            commit_window: default_commit_window(),
        }
    }
}

fn default_commit_window() -> Duration {
    Duration::from_millis(200)
}

fn default_max_messages() -> u64 {
    1_000_000
}

fn default_max_bytes() -> Size {
    Size::mib(256)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    #[default]
    DropOldest,
    DropNewest,
}

/// One physical bus: a serial port or a TCP endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "super::raw::RawBus")]
pub struct Bus {
    pub name: String,
    pub transport: BusTransport,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BusTransport {
    /// Modbus RTU on a serial port.
    Rtu {
        port: String,
        baud: u32,
        parity: Parity,
        data_bits: u8,
        stop_bits: u8,
        timeout: Duration,
        delay_between_requests: Duration,
    },
    /// Modbus TCP.
    Tcp {
        host: String,
        port: u16,
        timeout: Duration,
        delay_between_requests: Duration,
    },
    /// Modbus RTU frames over a TCP connection (serial device servers).
    RtuOverTcp {
        host: String,
        port: u16,
        timeout: Duration,
        delay_between_requests: Duration,
    },
    /// Line-framed ASCII on a serial port.
    SerialLine {
        port: String,
        baud: u32,
        parity: Parity,
        data_bits: u8,
        stop_bits: u8,
        /// Longest accepted line; longer lines are dropped and counted.
        max_line: Size,
    },
}

impl BusTransport {
    /// The `kind` as written in the file.
    pub fn kind_name(&self) -> &'static str {
        super::raw::BusKind::of(self).name()
    }

    pub fn is_modbus(&self) -> bool {
        !matches!(self, BusTransport::SerialLine { .. })
    }

    /// Whether slaves are addressed with RTU unit ids (1 to 247).
    pub fn uses_rtu_units(&self) -> bool {
        matches!(
            self,
            BusTransport::Rtu { .. } | BusTransport::RtuOverTcp { .. }
        )
    }

    /// Per-request timeout of a Modbus bus.
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            BusTransport::Rtu { timeout, .. }
            | BusTransport::Tcp { timeout, .. }
            | BusTransport::RtuOverTcp { timeout, .. } => Some(*timeout),
            BusTransport::SerialLine { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

impl From<Parity> for tokio_serial::Parity {
    fn from(p: Parity) -> Self {
        match p {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        }
    }
}

/// One field device, and one MQTT client session upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub id: String,
    #[serde(rename = "type")]
    pub device_type: String,
    /// After loading, holds the content of `token_file` when that was given.
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    pub bus: String,
    /// Modbus unit (slave) id.
    pub unit: Option<u8>,
    #[serde(default = "default_poll")]
    pub poll: Duration,
    #[serde(default = "default_event")]
    pub event: String,
    #[serde(default = "default_qos", deserialize_with = "deserialize_qos")]
    pub qos: Qos,
    #[serde(default)]
    pub publish: PublishMode,
    /// With `publish: on_change`: republish unchanged values this often.
    pub heartbeat: Option<Duration>,
    #[serde(default)]
    pub registers: Vec<Register>,
    #[serde(default)]
    pub commands: Vec<Command>,
    pub parser: Option<LineParser>,
    /// Answer device management requests (`iotdm-1/#`).
    #[serde(default)]
    pub managed: bool,
    /// The device's own client certificate for its session.
    pub tls: Option<DeviceTls>,
    /// Write with FC15/FC16 even a single coil or register (many devices reject
    /// FC05/FC06).
    #[serde(default)]
    pub always_write_multiple: bool,
    /// Unused addresses the planner may read through to merge two requests (registers
    /// for holding/input, bits for coil/discrete). `0`: never read unconfigured addresses.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Largest register read per request (1 to 125).
    #[serde(default = "default_max_request_registers")]
    pub max_request_registers: u16,
    /// Largest coil/discrete read per request (1 to 2000).
    #[serde(default = "default_max_request_bits")]
    pub max_request_bits: u16,
}

fn default_poll() -> Duration {
    Duration::from_secs(1)
}

fn default_event() -> String {
    "status".into()
}

fn default_qos() -> Qos {
    Qos::AtLeastOnce
}

pub(crate) const DEFAULT_MAX_GAP: u16 = 16;

fn default_max_gap() -> u16 {
    DEFAULT_MAX_GAP
}

fn default_max_request_registers() -> u16 {
    125
}

fn default_max_request_bits() -> u16 {
    2000
}

fn deserialize_qos<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Qos, D::Error> {
    match u8::deserialize(deserializer)? {
        0 => Ok(Qos::AtMostOnce),
        1 => Ok(Qos::AtLeastOnce),
        other => Err(de::Error::custom(format!(
            "qos {other} is not supported for events, expected 0 (at most once) or 1 (at least once, queued on disk)"
        ))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishMode {
    #[default]
    EveryPoll,
    OnChange,
}

/// One tag read from the device.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub name: String,
    pub kind: RegisterKind,
    pub address: u16,
    #[serde(rename = "type")]
    pub data_type: DataType,
    #[serde(default)]
    pub order: WordOrder,
    /// A single bit (0 = least significant) of a holding/input register, with `type: bool`.
    pub bit: Option<u8>,
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit of the scaled value: shown by `check`, carried with the tag.
    pub unit: Option<String>,
    /// With `publish: on_change`: smallest change (after scale and offset) that counts.
    pub deadband: Option<f64>,
    /// Home Assistant: the entity's device class (inferred from `unit` when absent).
    pub device_class: Option<String>,
    /// Home Assistant: `measurement`, `total` or `total_increasing`.
    pub state_class: Option<StateClass>,
    /// Home Assistant: an icon such as `mdi:thermometer`.
    pub icon: Option<String>,
}

/// Home Assistant's state class of a sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateClass {
    Measurement,
    Total,
    TotalIncreasing,
}

impl StateClass {
    pub fn as_str(self) -> &'static str {
        match self {
            StateClass::Measurement => "measurement",
            StateClass::Total => "total",
            StateClass::TotalIncreasing => "total_increasing",
        }
    }
}

fn default_scale() -> f64 {
    1.0
}

/// A writable tag, set through an MQTT command of the same name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub name: String,
    /// `coil` or `holding`.
    pub kind: RegisterKind,
    pub address: u16,
    #[serde(rename = "type")]
    pub data_type: DataType,
    #[serde(default)]
    pub order: WordOrder,
    /// Written value = (command value - offset) / scale.
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Named values: a command may send `"heat"` instead of `1`.
    pub values: Option<BTreeMap<String, f64>>,
    /// Read the value back after writing and report it in the result.
    #[serde(default)]
    pub readback: bool,
    /// Home Assistant: the entity's device class.
    pub device_class: Option<String>,
    /// Home Assistant: an icon such as `mdi:thermostat`.
    pub icon: Option<String>,
}

/// How a serial-line device turns each line into fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "super::raw::RawLineParser")]
pub enum LineParser {
    /// A regular expression with named groups; `fields` types the groups it lists,
    /// the other named groups are published as strings.
    Regex {
        regex: regex::Regex,
        fields: BTreeMap<String, FieldType>,
    },
    /// Each line is a JSON object, published as it is.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    F64,
    I64,
    U64,
    Bool,
    String,
}
