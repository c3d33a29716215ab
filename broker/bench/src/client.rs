//! Benchmark clients: publishers, subscribers and idle connections on raw TCP.
//!
//! Each client owns one socket and fixed-size buffers; nothing queues between tasks, so a
//! slow or stuck broker shows up as lower counts, never as memory growth in the generator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fieldbridge_mqtt::codec::{
    ByteString, ConnAck, Connect, Disconnect, Error as CodecError, MqttCodec, Packet, Properties,
    ProtocolVersion, PubAck, QoS, ReasonCode, Subscribe, SubscribeFilter, SubscribeReturnCode,
};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use crate::stamp::{Stamp, StampedPublish};

/// Bytes read from a socket at a time (the buffer grows to one packet beyond this at most).
const READ_CHUNK: usize = 64 * 1024;
/// Messages a flat-out publisher hands to the kernel in one write.
const FLAT_OUT_BATCH: usize = 64;
/// Messages a fixed-rate publisher catches up with in one write when it falls behind.
const RATE_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("connection refused by the broker (CONNACK return code {0})")]
    Refused(u8),
    #[error("subscription refused by the broker (SUBACK return code 0x80)")]
    SubscriptionRefused,
    #[error("unexpected {0} from the broker")]
    Unexpected(&'static str),
    #[error("disconnected by the broker: {0}")]
    Disconnected(ReasonCode),
    #[error("connection closed by the broker")]
    Closed,
    #[error("no answer from the broker within {0:?}")]
    Timeout(Duration),
}

/// Nanoseconds since the generator started, from the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
        }
    }

    pub fn nanos(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn nanos_at(&self, instant: Instant) -> u64 {
        u64::try_from(instant.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// What every connection needs to know about the broker.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub address: String,
    /// MQTT 3.1.1 or 5 for every connection.
    pub protocol: ProtocolVersion,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keepalive: Duration,
    pub timeout: Duration,
    pub max_packet: usize,
    /// SO_SNDBUF of the socket; publishers keep it small so that a flat-out run does not
    /// leave megabytes of messages in the kernel for the broker to read after the run.
    pub send_buffer: Option<u32>,
}

/// Connections the broker closed or that failed after connecting, with the first reason.
#[derive(Debug, Default)]
pub struct Failures {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Failures {
    pub fn record(&self, who: &str, error: &ClientError) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock();
        if first.is_none() {
            *first = Some(format!("{who}: {error}"));
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn first(&self) -> Option<String> {
        self.first.lock().clone()
    }
}

/// A connected MQTT session: the socket halves, what was read past the CONNACK, and the
/// codec that knows the protocol version the CONNECT chose.
pub struct Session {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    buffer: BytesMut,
    codec: MqttCodec,
}

impl Session {
    /// Opens a TCP connection and completes the MQTT handshake (and the SUBSCRIBE when
    /// `subscribe` is given), all within `options.timeout`.
    pub async fn open(
        options: &ConnectOptions,
        client_id: &str,
        subscribe: Option<(&str, QoS)>,
    ) -> Result<Self, ClientError> {
        tokio::time::timeout(
            options.timeout,
            Self::handshake(options, client_id, subscribe),
        )
        .await
        .map_err(|_| ClientError::Timeout(options.timeout))?
    }

    async fn handshake(
        options: &ConnectOptions,
        client_id: &str,
        subscribe: Option<(&str, QoS)>,
    ) -> Result<Self, ClientError> {
        let address = tokio::net::lookup_host(&options.address)
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} has no address", options.address),
                )
            })?;
        let socket = if address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(size) = options.send_buffer {
            socket.set_send_buffer_size(size)?;
        }
        let stream = socket.connect(address).await?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let mut session = Self {
            reader,
            writer,
            buffer: BytesMut::with_capacity(READ_CHUNK),
            codec: MqttCodec::new(options.max_packet),
        };
        let mut out = BytesMut::with_capacity(256);
        session
            .codec
            .encode(connect_packet(options, client_id), &mut out)?;
        session.writer.write_all(&out).await?;
        match session.next_packet().await? {
            Packet::ConnAck(ConnAck {
                code: ReasonCode::Success,
                ..
            }) => {}
            Packet::ConnAck(ConnAck { code, .. }) => return Err(ClientError::Refused(code as u8)),
            other => return Err(ClientError::Unexpected(other.name())),
        }
        // Like most clients, subscribe once the CONNACK is in.
        if let Some((filter, qos)) = subscribe {
            out.clear();
            let subscribe = Subscribe {
                pkid: 1,
                filters: vec![SubscribeFilter::new(filter, qos)],
                properties: Properties::new(),
            };
            session
                .codec
                .encode(Packet::Subscribe(subscribe), &mut out)?;
            session.writer.write_all(&out).await?;
            match session.next_packet().await? {
                Packet::SubAck(suback)
                    if suback
                        .return_codes
                        .iter()
                        .any(|code| matches!(code, SubscribeReturnCode::Failure(_))) =>
                {
                    return Err(ClientError::SubscriptionRefused)
                }
                Packet::SubAck(_) => {}
                other => return Err(ClientError::Unexpected(other.name())),
            }
        }
        Ok(session)
    }

    /// Reads the next packet of the handshake.
    async fn next_packet(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(packet) = self.codec.decode(&mut self.buffer)? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes into the buffer; the end of the stream is an error.
    async fn fill(&mut self) -> Result<usize, ClientError> {
        fill(&mut self.reader, &mut self.buffer).await
    }
}

/// The CONNECT of every connection: clean session (MQTT 5: Clean Start, and a session
/// that ends with the connection), no properties.
fn connect_packet(options: &ConnectOptions, client_id: &str) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: options.protocol,
        clean_session: true,
        keep_alive: u16::try_from(options.keepalive.as_secs()).unwrap_or(u16::MAX),
        client_id: ByteString::from(client_id),
        will: None,
        username: options.username.as_deref().map(ByteString::from),
        password: (options.password.as_deref()).map(|p| Bytes::copy_from_slice(p.as_bytes())),
        properties: Properties::new(),
    }))
}

async fn fill(reader: &mut OwnedReadHalf, buffer: &mut BytesMut) -> Result<usize, ClientError> {
    buffer.reserve(READ_CHUNK);
    match reader.read_buf(buffer).await? {
        0 => Err(ClientError::Closed),
        read => Ok(read),
    }
}

/// Counters of one publisher, read by the main task while it runs.
#[derive(Debug, Default)]
pub struct PublisherCounters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
}

/// How a publisher paces itself.
#[derive(Debug, Clone, Copy)]
pub struct PublishPlan {
    pub qos: QoS,
    /// Messages per second, or flat out.
    pub rate: Option<f64>,
    /// QoS 1 messages awaiting PUBACK at once.
    pub inflight: usize,
    pub start: Instant,
    pub end: Instant,
    /// How long to wait for outstanding PUBACKs after `end`.
    pub drain: Duration,
    /// A publisher idle for half of this pings the broker.
    pub keepalive: Duration,
}

/// Publishes `payload`-sized messages on `topic` until `plan.end`, then (QoS 1) waits for
/// the outstanding acknowledgements.
pub async fn publish(
    session: Session,
    index: u32,
    topic: String,
    payload: usize,
    plan: PublishPlan,
    clock: Clock,
    counters: Arc<PublisherCounters>,
) -> Result<(), ClientError> {
    let Session {
        reader,
        mut writer,
        buffer,
        mut codec,
    } = session;
    let acknowledged = plan.qos != QoS::AtMostOnce;
    let window = Arc::new(Semaphore::new(if acknowledged { plan.inflight } else { 0 }));
    let stop_reading = CancellationToken::new();
    let acks = tokio::spawn(read_acks(
        reader,
        buffer,
        codec.clone(),
        Arc::clone(&window),
        Arc::clone(&counters),
        stop_reading.clone(),
    ));
    let _stop_reading = stop_reading.clone().drop_guard();
    let mut message = StampedPublish::new(&topic, plan.qos, payload);
    let batch = if plan.rate.is_some() {
        RATE_BATCH
    } else {
        FLAT_OUT_BATCH
    };
    let mut out = BytesMut::with_capacity(batch * (payload + topic.len() + 8));
    let mut truncated = false;
    let outcome = async {
        let mut sequence = 0u64;
        let mut last_write = Instant::now();
        tokio::time::sleep_until(plan.start.into()).await;
        loop {
            let now = Instant::now();
            if now >= plan.end {
                break;
            }
            let mut count = match plan.rate {
                None => batch,
                Some(rate) => {
                    let due = due_count(plan.start, now, rate).saturating_sub(sequence);
                    if due == 0 {
                        let next =
                            plan.start + Duration::from_secs_f64((sequence + 1) as f64 / rate);
                        let ping_at = last_write + plan.keepalive / 2;
                        tokio::time::sleep_until(next.min(ping_at).min(plan.end).into()).await;
                        if Instant::now() >= ping_at {
                            codec.encode(Packet::PingReq, &mut out)?;
                            write(&mut writer, &mut out, &stop_reading).await?;
                            last_write = Instant::now();
                        }
                        continue;
                    }
                    usize::try_from(due).unwrap_or(batch).min(batch)
                }
            };
            if acknowledged {
                let permit = tokio::select! {
                    permit = window.acquire() => permit,
                    () = tokio::time::sleep_until(plan.end.into()) => break,
                };
                // A closed window means the reader saw the connection end.
                let permit = permit.map_err(|_| ClientError::Closed)?;
                permit.forget();
                let mut granted = 1;
                while granted < count {
                    match window.try_acquire() {
                        Ok(permit) => {
                            permit.forget();
                            granted += 1;
                        }
                        Err(_) => break,
                    }
                }
                count = granted;
            }
            let sent_nanos = clock.nanos();
            for _ in 0..count {
                sequence += 1;
                let stamp = Stamp {
                    publisher: index,
                    sequence,
                    sent_nanos,
                };
                // Packet identifiers 1..=65535 in turn; the window is far smaller.
                let packet_id = (sequence % 65_535) as u16 + 1;
                message.encode(packet_id, stamp, &mut codec, &mut out)?;
            }
            let packet_size = out.len() / count;
            let written = write_until(&mut writer, &mut out, plan.end, &stop_reading).await?;
            last_write = Instant::now();
            counters
                .sent
                .fetch_add((written / packet_size) as u64, Ordering::Relaxed);
            if !out.is_empty() {
                // Cut off mid-packet at the end of the run: the connection cannot be used
                // any more, and the remaining messages were never sent.
                truncated = true;
                break;
            }
        }
        if acknowledged && !truncated {
            let everything = u32::try_from(plan.inflight).unwrap_or(u32::MAX);
            // All permits back means every message was acknowledged.
            if let Ok(Err(_)) =
                tokio::time::timeout(plan.drain, window.acquire_many(everything)).await
            {
                return Err(ClientError::Closed);
            }
        }
        Ok(())
    }
    .await;
    stop_reading.cancel();
    // The reader knows best why a connection ended.
    let outcome = match acks.await {
        Ok(Err(error)) => Err(error),
        _ => outcome,
    };
    if outcome.is_ok() && !truncated {
        out.clear();
        disconnect(&mut writer, &mut codec, &mut out).await;
    }
    outcome
}

/// Says goodbye to the broker, giving up after a second.
async fn disconnect(writer: &mut OwnedWriteHalf, codec: &mut MqttCodec, out: &mut BytesMut) {
    if codec
        .encode(Packet::Disconnect(Disconnect::default()), out)
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(1), writer.write_all(out)).await;
    }
}

/// Writes `out` unless the connection's reader has already given up.
async fn write(
    writer: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    failed: &CancellationToken,
) -> Result<(), ClientError> {
    tokio::select! {
        result = writer.write_all(out) => result?,
        () = failed.cancelled() => return Err(ClientError::Closed),
    }
    out.clear();
    Ok(())
}

/// Writes `out` until it is all written or `until` passes, and returns the bytes written;
/// what is left stays in `out`.
async fn write_until(
    writer: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    until: Instant,
    failed: &CancellationToken,
) -> Result<usize, ClientError> {
    let total = out.len();
    while !out.is_empty() {
        // `write_buf` only advances `out` by what the kernel took.
        tokio::select! {
            written = writer.write_buf(out) => {
                if written? == 0 {
                    return Err(ClientError::Closed);
                }
            }
            () = tokio::time::sleep_until(until.into()) => break,
            () = failed.cancelled() => return Err(ClientError::Closed),
        }
    }
    Ok(total - out.len())
}

/// Messages due by `now` at `rate` per second since `start`.
fn due_count(start: Instant, now: Instant, rate: f64) -> u64 {
    (now.saturating_duration_since(start).as_secs_f64() * rate) as u64 + 1
}

/// Reads PUBACKs (and PINGRESPs) of a publisher, returning permits to its window.
async fn read_acks(
    mut reader: OwnedReadHalf,
    mut buffer: BytesMut,
    mut codec: MqttCodec,
    window: Arc<Semaphore>,
    counters: Arc<PublisherCounters>,
    stop: CancellationToken,
) -> Result<(), ClientError> {
    let result = async {
        loop {
            while let Some(packet) = codec.decode(&mut buffer)? {
                match packet {
                    Packet::PubAck(_) => {
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                        window.add_permits(1);
                    }
                    Packet::PingResp => {}
                    Packet::Disconnect(disconnect) => {
                        return Err(ClientError::Disconnected(disconnect.reason))
                    }
                    other => return Err(ClientError::Unexpected(other.name())),
                }
            }
            tokio::select! {
                read = fill(&mut reader, &mut buffer) => { read?; }
                () = stop.cancelled() => return Ok(()),
            }
        }
    }
    .await;
    if result.is_err() {
        window.close();
        stop.cancel();
    }
    result
}

/// What one subscriber saw.
pub struct SubscriberReport {
    /// Messages of this run's publishers, duplicates included.
    pub received: u64,
    /// Messages whose sequence number was not above the last one from the same publisher.
    pub out_of_order: u64,
    /// Per publisher: the highest sequence number received, and how many messages raised
    /// it. A publisher's messages arrive in order, so the difference is what the broker
    /// dropped, and numbers beyond the highest were still on their way when the run ended.
    pub highest: Vec<u64>,
    pub in_order: Vec<u64>,
    /// Messages that did not come from this run's publishers.
    pub foreign: u64,
    /// When the last message of this run's publishers arrived (`Clock` nanoseconds).
    pub last_received_nanos: u64,
    /// Publish-to-receive latency of the messages sent inside the measurement window, in
    /// microseconds (fixed-rate runs only).
    pub latency: Option<Histogram<u64>>,
}

/// Which messages a subscriber times.
#[derive(Debug, Clone, Copy)]
pub struct LatencyWindow {
    pub from_nanos: u64,
    pub to_nanos: u64,
}

/// Creates the histogram latencies are recorded in: 1 µs to 60 s, 2 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).unwrap_or_else(|_| {
        // The bounds are constants that hdrhistogram accepts.
        unreachable!("valid histogram bounds")
    })
}

/// Receives messages until cancelled, acknowledging QoS 1 deliveries and pinging the
/// broker every half keepalive.
#[allow(clippy::too_many_arguments)]
pub async fn subscribe(
    session: Session,
    publishers: usize,
    received: Arc<AtomicU64>,
    clock: Clock,
    latency_window: Option<LatencyWindow>,
    keepalive: Duration,
    stop: CancellationToken,
) -> (SubscriberReport, Result<(), ClientError>) {
    let Session {
        mut reader,
        mut writer,
        mut buffer,
        mut codec,
    } = session;
    let mut report = SubscriberReport {
        received: 0,
        out_of_order: 0,
        highest: vec![0; publishers],
        in_order: vec![0; publishers],
        foreign: 0,
        last_received_nanos: 0,
        latency: latency_window.map(|_| latency_histogram()),
    };
    let mut out = BytesMut::with_capacity(4096);
    let mut ping = tokio::time::interval(keepalive / 2);
    ping.tick().await;
    let result = async {
        loop {
            let read = tokio::select! {
                read = fill(&mut reader, &mut buffer) => read,
                _ = ping.tick() => {
                    codec.encode(Packet::PingReq, &mut out)?;
                    Ok(0)
                }
                () = stop.cancelled() => return Ok(()),
            };
            read?;
            let now = clock.nanos();
            let before = report.received;
            while let Some(packet) = codec.decode(&mut buffer)? {
                match packet {
                    Packet::Publish(publish) => {
                        if publish.qos != QoS::AtMostOnce {
                            codec.encode(Packet::PubAck(PubAck::new(publish.pkid)), &mut out)?;
                        }
                        record(&mut report, &publish.payload, now, latency_window);
                    }
                    Packet::PingResp | Packet::PubAck(_) => {}
                    Packet::Disconnect(disconnect) => {
                        return Err(ClientError::Disconnected(disconnect.reason))
                    }
                    other => return Err(ClientError::Unexpected(other.name())),
                }
            }
            received.fetch_add(report.received - before, Ordering::Relaxed);
            if !out.is_empty() {
                tokio::select! {
                    result = writer.write_all(&out) => result?,
                    () = stop.cancelled() => return Ok(()),
                }
                out.clear();
            }
        }
    }
    .await;
    if result.is_ok() {
        out.clear();
        disconnect(&mut writer, &mut codec, &mut out).await;
    }
    (report, result)
}

fn record(
    report: &mut SubscriberReport,
    payload: &[u8],
    now_nanos: u64,
    latency_window: Option<LatencyWindow>,
) {
    let Some(stamp) = Stamp::read(payload) else {
        report.foreign += 1;
        return;
    };
    let Some(index) = usize::try_from(stamp.publisher)
        .ok()
        .filter(|&index| index < report.highest.len())
    else {
        report.foreign += 1;
        return;
    };
    report.received += 1;
    report.last_received_nanos = now_nanos;
    if stamp.sequence <= report.highest[index] {
        report.out_of_order += 1;
    } else {
        report.highest[index] = stamp.sequence;
        report.in_order[index] += 1;
    }
    if let (Some(histogram), Some(window)) = (&mut report.latency, latency_window) {
        if (window.from_nanos..window.to_nanos).contains(&stamp.sent_nanos) {
            let micros = now_nanos.saturating_sub(stamp.sent_nanos) / 1000;
            histogram.saturating_record(micros.max(1));
        }
    }
}

/// Holds a connection open, pinging every half keepalive, until cancelled or closed.
pub async fn hold_idle(
    session: Session,
    keepalive: Duration,
    stop: CancellationToken,
) -> Result<(), ClientError> {
    let Session {
        mut reader,
        mut writer,
        mut buffer,
        mut codec,
    } = session;
    let mut out = BytesMut::with_capacity(16);
    let mut ping = tokio::time::interval(keepalive / 2);
    ping.tick().await;
    loop {
        tokio::select! {
            read = fill(&mut reader, &mut buffer) => {
                read?;
                while codec.decode(&mut buffer)?.is_some() {}
            }
            _ = ping.tick() => {
                codec.encode(Packet::PingReq, &mut out)?;
                writer.write_all(&out).await?;
                out.clear();
            }
            () = stop.cancelled() => {
                disconnect(&mut writer, &mut codec, &mut out).await;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// User u, password p, keepalive 60 s.
    fn options(protocol: ProtocolVersion) -> ConnectOptions {
        ConnectOptions {
            address: "127.0.0.1:1883".into(),
            protocol,
            username: Some("u".into()),
            password: Some("p".into()),
            keepalive: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            max_packet: 1 << 20,
            send_buffer: None,
        }
    }

    #[test]
    fn connect_matches_the_specification_example() {
        let options = options(ProtocolVersion::V311);
        let mut out = BytesMut::new();
        MqttCodec::new(options.max_packet)
            .encode(connect_packet(&options, "c"), &mut out)
            .unwrap();
        assert_eq!(
            &out[..],
            &[
                0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60, 0, 1, b'c', 0, 1, b'u', 0,
                1, b'p'
            ]
        );
    }

    #[test]
    fn mqtt5_connect_and_the_packets_after_it_carry_properties() {
        let options = options(ProtocolVersion::V5);
        let mut codec = MqttCodec::new(options.max_packet);
        let mut out = BytesMut::new();
        codec
            .encode(connect_packet(&options, "c"), &mut out)
            .unwrap();
        assert_eq!(
            &out[..],
            &[
                0x10, 20, 0, 4, b'M', b'Q', b'T', b'T', 5, 0xC2, 0, 60, 0, 0, 1, b'c', 0, 1, b'u',
                0, 1, b'p'
            ]
        );
        out.clear();
        let mut message = StampedPublish::new("t", QoS::AtLeastOnce, 20);
        let stamp = Stamp {
            publisher: 1,
            sequence: 2,
            sent_nanos: 3,
        };
        message.encode(9, stamp, &mut codec, &mut out).unwrap();
        assert_eq!(
            &out[..8],
            &[0x32, 26, 0, 1, b't', 0, 9, 0],
            "property length 0"
        );
        let Some(Packet::Publish(publish)) = codec.decode(&mut out).unwrap() else {
            panic!("a PUBLISH");
        };
        assert_eq!(Stamp::read(&publish.payload), Some(stamp));
    }
}
