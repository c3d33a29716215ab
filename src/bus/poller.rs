//! The task of one Modbus bus: polls every device on it by its own schedule, one
//! request at a time, and keeps a dead or slow slave from stalling the others.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_modbus::client::Context;
use tokio_util::sync::CancellationToken;

use super::link::InputSinceRequest;
use super::modbus::{
    self, read, ModbusEndpoint, ReadData, RequestDeadline, RequestError, WriteData,
};
use crate::backoff::Backoff;
use crate::device::{DeviceState, OFFLINE_AFTER_FAILURES};
use crate::event::EventSink;
use crate::metrics::DeviceCounters;
use crate::plan::{ReadRequest, Slot};
use crate::registers::codec::{self, apply_scale, CodecError, Value};
use crate::registers::{DataType, RegisterKind, WordOrder};
use fieldbridge_service::LogThrottle;

/// A device that answers no more is polled at a slower rate, up to this interval
/// (or its own poll interval, when that is longer).
pub const MAX_DEAD_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// How to read one tag out of the answer to the request that covers it.
#[derive(Debug, Clone)]
pub struct Tag {
    pub name: String,
    pub kind: RegisterKind,
    pub address: u16,
    pub data_type: DataType,
    pub order: WordOrder,
    pub bit: Option<u8>,
    pub scale: f64,
    pub offset: f64,
    pub deadband: Option<f64>,
    /// Engineering unit of the scaled value, for whoever presents it (`check`, and the
    /// upstream profiles that publish metadata with the value).
    pub unit: Option<String>,
}

impl Tag {
    fn decode(&self, slot: &Slot, data: &ReadData) -> Result<Value, CodecError> {
        let short = || CodecError::Length {
            data_type: self.data_type,
            expected: slot.range().end,
            actual: 0,
        };
        let raw = match data {
            ReadData::Bits(bits) => codec::decode_coil(slot.extract(bits).ok_or_else(short)?)?,
            ReadData::Words(words) => {
                let words = slot.extract(words).ok_or_else(short)?;
                match self.bit {
                    Some(bit) => codec::decode_bit(words[0], bit)?,
                    None => codec::decode(self.data_type, self.order, words)?,
                }
            }
        };
        apply_scale(raw, self.scale, self.offset)
    }
}

/// One slave on the bus and its schedule.
#[derive(Debug)]
pub struct PolledDevice {
    pub unit: u8,
    pub poll: Duration,
    pub tags: Vec<Tag>,
    /// The planned reads; a read that hits a hole in the device's map is split.
    pub requests: Vec<ReadRequest>,
    pub state: DeviceState,
    pub counters: Arc<DeviceCounters>,
    next_due: Instant,
    errors: LogThrottle,
}

impl PolledDevice {
    pub fn new(
        unit: u8,
        poll: Duration,
        tags: Vec<Tag>,
        requests: Vec<ReadRequest>,
        state: DeviceState,
    ) -> Self {
        PolledDevice {
            unit,
            poll,
            tags,
            requests,
            state,
            counters: Arc::default(),
            next_due: Instant::now(),
            errors: LogThrottle::new(Duration::from_secs(60)),
        }
    }

    /// The interval until the next poll: the configured one, stretched exponentially
    /// while the device is offline.
    fn interval(&self) -> Duration {
        let failures = self.state.consecutive_failures();
        if failures < OFFLINE_AFTER_FAILURES {
            return self.poll;
        }
        let doublings = (failures - OFFLINE_AFTER_FAILURES + 1).min(16);
        (self.poll * (1u32 << doublings)).min(MAX_DEAD_POLL_INTERVAL.max(self.poll))
    }

    fn schedule_next(&mut self, now: Instant) {
        let interval = self.interval();
        self.next_due += interval;
        // After an overrun, skip the missed cycles instead of bursting to catch up.
        if self.next_due <= now {
            self.next_due = now + interval;
        }
    }
}

/// Settings of a Modbus bus task.
#[derive(Debug, Clone)]
pub struct BusSettings {
    pub name: String,
    pub endpoint: ModbusEndpoint,
    pub timeout: Duration,
    pub delay_between_requests: Duration,
}

/// What other tasks ask of a bus, done ahead of pending polls.
#[derive(Debug)]
pub enum BusRequest {
    Write(WriteRequest),
    /// Start over with a device: reopen the link and poll it now, as after a reboot.
    Reinitialize {
        unit: u8,
        done: oneshot::Sender<()>,
    },
}

/// A write for a slave on the bus.
#[derive(Debug)]
pub struct WriteRequest {
    pub unit: u8,
    pub address: u16,
    pub data: WriteData,
    /// FC15/FC16 even for a single coil or register.
    pub always_multiple: bool,
    /// Read this table and count at `address` after writing, and answer with it.
    pub readback: Option<(RegisterKind, u16)>,
    pub reply: oneshot::Sender<Result<Option<ReadData>, RequestError>>,
}

/// Writes waiting for one bus, at most; a command beyond that is refused as busy.
pub const WRITE_QUEUE: usize = 32;

/// The bus task's state: its link and its devices.
pub struct ModbusBus {
    settings: BusSettings,
    devices: Vec<PolledDevice>,
    requests: mpsc::Receiver<BusRequest>,
    link: Option<Context>,
    link_input: Option<InputSinceRequest>,
    deadline: RequestDeadline,
    reconnect: Backoff,
    next_connect: Instant,
    /// Why the link is down, reported by every poll until it is back.
    link_error: String,
    last_request_end: Option<Instant>,
    link_errors: LogThrottle,
}

/// Outcome of one device's poll cycle.
enum Cycle {
    Answered(Vec<(String, Value)>),
    Failed(String),
}

impl ModbusBus {
    pub fn new(
        settings: BusSettings,
        devices: Vec<PolledDevice>,
        requests: mpsc::Receiver<BusRequest>,
    ) -> Self {
        ModbusBus {
            deadline: RequestDeadline::new(settings.timeout),
            settings,
            devices,
            requests,
            link: None,
            link_input: None,
            reconnect: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
            next_connect: Instant::now(),
            link_error: String::new(),
            last_request_end: None,
            link_errors: LogThrottle::new(Duration::from_secs(60)),
        }
    }

    /// Polls until `shutdown` is cancelled or the event consumer is gone.
    pub async fn run(mut self, sink: EventSink, shutdown: CancellationToken) {
        tracing::info!(bus = %self.settings.name, endpoint = %self.settings.endpoint, devices = self.devices.len(), "bus started");
        while !self.devices.is_empty() {
            let next = self
                .devices
                .iter()
                .enumerate()
                .min_by_key(|(_, d)| d.next_due)
                .map(|(i, d)| (i, d.next_due))
                .expect("devices is not empty");
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(request) = self.requests.recv() => {
                    self.handle(request).await;
                    continue;
                }
                _ = tokio::time::sleep_until(next.1) => {}
            }
            let index = next.0;
            let cycle = tokio::select! {
                _ = shutdown.cancelled() => break,
                cycle = self.poll_device(index) => cycle,
            };
            if !self.publish(index, cycle, &sink).await {
                break;
            }
            let now = Instant::now();
            self.devices[index].schedule_next(now);
        }
        tracing::info!(bus = %self.settings.name, "bus stopped");
    }

    async fn publish(&mut self, index: usize, cycle: Cycle, sink: &EventSink) -> bool {
        let device = &mut self.devices[index];
        let wall = time::OffsetDateTime::now_utc();
        DeviceCounters::add(&device.counters.polls);
        let events = match cycle {
            Cycle::Answered(values) => {
                device.errors.reset();
                let tags = &device.tags;
                let deadband = |name: &str| {
                    tags.iter()
                        .find(|t| t.name == name)
                        .and_then(|t| t.deadband)
                };
                device
                    .state
                    .record_values(values, deadband, std::time::Instant::now(), wall)
            }
            Cycle::Failed(error) => {
                DeviceCounters::add(&device.counters.poll_failures);
                if let Some(repeats) = device
                    .errors
                    .admit_changed(&error, Instant::now().into_std())
                {
                    tracing::warn!(bus = %self.settings.name, device = device.state.id(), unit = device.unit, repeats, "poll failed: {error}");
                }
                device
                    .state
                    .record_failure(&error, wall)
                    .into_iter()
                    .collect()
            }
        };
        for event in events {
            if !sink.emit(event).await {
                return false;
            }
        }
        true
    }

    /// Makes sure the link is open, reconnecting with backoff; the link and the deadline
    /// of its requests.
    async fn ensure_link(&mut self) -> Result<(&mut Context, &mut RequestDeadline), String> {
        if self.link.is_none() {
            let now = Instant::now();
            if now < self.next_connect {
                return Err(self.link_error.clone());
            }
            match self.settings.endpoint.open(self.settings.timeout).await {
                Ok((ctx, input)) => {
                    tracing::info!(bus = %self.settings.name, endpoint = %self.settings.endpoint, "bus link open");
                    self.reconnect.reset();
                    self.link_errors.reset();
                    self.link = Some(ctx);
                    self.link_input = input;
                }
                Err(e) => {
                    let message = format!("cannot open {}: {e}", self.settings.endpoint);
                    if self
                        .link_errors
                        .admit_changed(&message, now.into_std())
                        .is_some()
                    {
                        tracing::error!(bus = %self.settings.name, "{message}");
                    }
                    self.next_connect = now + self.reconnect.next_delay();
                    self.link_error = message.clone();
                    return Err(message);
                }
            }
        }
        let link = self.link.as_mut().expect("link was just opened");
        Ok((link, &mut self.deadline))
    }

    async fn poll_device(&mut self, index: usize) -> Cycle {
        let mut values = Vec::new();
        // The last exception of the cycle: a device that answers every read with one is
        // reachable but gives nothing, and counts as failing.
        let mut last_exception = None;
        let mut request_index = 0;
        while request_index < self.devices[index].requests.len() {
            self.handle_pending_requests().await;
            let request = self.devices[index].requests[request_index].clone();
            match self.execute(self.devices[index].unit, &request).await {
                Ok(data) => {
                    let device = &self.devices[index];
                    for slot in &request.slots {
                        let tag = &device.tags[slot.tag];
                        match tag.decode(slot, &data) {
                            Ok(value) => values.push((tag.name.clone(), value)),
                            Err(e) => {
                                tracing::warn!(device = device.state.id(), tag = %tag.name, "cannot decode: {e}")
                            }
                        }
                    }
                    request_index += 1;
                }
                Err(e) if e.is_illegal_address() && request.slots.len() > 1 => {
                    DeviceCounters::add(&self.devices[index].counters.modbus_exceptions);
                    // A coalesced read crossed a hole in the device's map: read the
                    // two sides separately from now on.
                    match request.split_at_largest_gap() {
                        Some((left, right)) => {
                            tracing::info!(
                                device = self.devices[index].state.id(),
                                "device refused {request}; splitting it"
                            );
                            let requests = &mut self.devices[index].requests;
                            requests.splice(request_index..=request_index, [left, right]);
                        }
                        None => request_index += 1,
                    }
                }
                Err(e) if e.is_exception() => {
                    let device = &mut self.devices[index];
                    DeviceCounters::add(&device.counters.modbus_exceptions);
                    let message = format!("{request}: {e}");
                    last_exception = Some(message.clone());
                    if device
                        .errors
                        .admit_changed(&message, std::time::Instant::now())
                        .is_some()
                    {
                        tracing::warn!(device = device.state.id(), "{message}");
                    }
                    request_index += 1;
                }
                Err(e) => return Cycle::Failed(e.to_string()),
            }
        }
        match last_exception {
            Some(exception) if values.is_empty() => Cycle::Failed(format!(
                "every read answered with an exception: {exception}"
            )),
            _ => Cycle::Answered(values),
        }
    }

    /// Runs one read.
    async fn execute(&mut self, unit: u8, request: &ReadRequest) -> Result<ReadData, RequestError> {
        let (kind, address, count) = (request.kind, request.address, request.count);
        self.exchange(async |ctx, deadline| read(ctx, unit, kind, address, count, deadline).await)
            .await
    }

    /// Runs one write, then the read-back if asked, and answers the requester.
    async fn execute_write(&mut self, write: WriteRequest) {
        let WriteRequest {
            unit,
            address,
            data,
            always_multiple,
            readback,
            reply,
        } = write;
        let mut outcome = self
            .exchange(async |ctx, deadline| {
                modbus::write(ctx, unit, address, &data, always_multiple, deadline).await
            })
            .await
            .map(|()| None);
        if let (Ok(_), Some((kind, count))) = (&outcome, readback) {
            outcome = self
                .exchange(async |ctx, deadline| {
                    read(ctx, unit, kind, address, count, deadline).await
                })
                .await
                .map(Some);
        }
        // The requester may have given up (shutdown); nothing to tell then.
        let _ = reply.send(outcome);
    }

    /// Handles what is waiting, ahead of the next poll request.
    async fn handle_pending_requests(&mut self) {
        while let Ok(request) = self.requests.try_recv() {
            self.handle(request).await;
        }
    }

    async fn handle(&mut self, request: BusRequest) {
        match request {
            BusRequest::Write(write) => self.execute_write(write).await,
            BusRequest::Reinitialize { unit, done } => {
                tracing::info!(bus = %self.settings.name, unit, "reinitializing the device");
                self.link = None;
                self.next_connect = Instant::now();
                self.reconnect.reset();
                let now = Instant::now();
                for device in self.devices.iter_mut().filter(|d| d.unit == unit) {
                    device.state.restart();
                    device.next_due = now;
                }
                let _ = done.send(());
            }
        }
    }

    /// Runs one exchange on the link, honouring the delay between requests, naming
    /// garbled answers, and dropping the link when it can no longer be trusted.
    async fn exchange<T>(
        &mut self,
        op: impl AsyncFnOnce(&mut Context, &mut RequestDeadline) -> Result<T, RequestError>,
    ) -> Result<T, RequestError> {
        // No timer when the delay has passed already (always with the default of zero).
        let ready_at = self
            .last_request_end
            .map(|end| end + self.settings.delay_between_requests);
        if let Some(ready_at) = ready_at.filter(|ready_at| *ready_at > Instant::now()) {
            tokio::time::sleep_until(ready_at).await;
        }
        let timeout = self.settings.timeout;
        let survives_timeout = self.settings.endpoint.survives_timeout();
        let (ctx, deadline) = self.ensure_link().await.map_err(RequestError::Link)?;
        let mut outcome = op(ctx, deadline).await;
        if let (Err(RequestError::Timeout(_)), Some(input)) = (&outcome, &self.link_input) {
            let received = input.get();
            if received > 0 {
                outcome = Err(RequestError::Garbled { timeout, received });
            }
        }
        self.last_request_end = Some(Instant::now());
        match &outcome {
            Err(RequestError::Timeout(_) | RequestError::Garbled { .. }) if survives_timeout => {}
            Err(
                RequestError::Timeout(_) | RequestError::Garbled { .. } | RequestError::Link(_),
            ) => {
                self.link = None;
            }
            _ => {}
        }
        outcome
    }
}
