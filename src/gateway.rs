//! Assembles the running gateway from a validated configuration: one task per bus,
//! every device on the bus of its config, all events into one sink.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::link::SerialSettings;
use crate::bus::modbus::{ModbusEndpoint, ReadData, RequestError, WriteData};
use crate::bus::poller::{
    BusRequest, BusSettings, ModbusBus, PolledDevice, Tag, WriteRequest, WRITE_QUEUE,
};
use crate::config::{Bus, BusTransport, Config, Device};
use crate::device::{DeviceState, PublishPolicy};
use crate::event::EventSink;
use crate::metrics::DeviceCounters;
use crate::plan::{plan, Limits, Plan, PlanError, Span};
use crate::registers::RegisterKind;
use crate::serial_line::bus::{LineBus, LineBusSettings, LineDevice};

/// A line device that sent nothing usable for `OFFLINE_AFTER_FAILURES` times this
/// long is reported offline.
const LINE_SILENCE_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// The running acquisition side: bus tasks feeding an [`EventSink`].
pub struct Gateway {
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
    buses: HashMap<String, DeviceBus>,
    counters: Vec<(String, Arc<DeviceCounters>)>,
}

/// Where to send writes for one Modbus device: its bus task.
#[derive(Debug, Clone)]
pub struct DeviceBus {
    unit: u8,
    always_write_multiple: bool,
    requests: mpsc::Sender<BusRequest>,
}

impl DeviceBus {
    /// Queues a write (ahead of pending polls) and waits for its outcome, with the
    /// registers or coils read back when `readback` names a table and count.
    pub async fn write(
        &self,
        address: u16,
        data: WriteData,
        readback: Option<(RegisterKind, u16)>,
    ) -> Result<Option<ReadData>, RequestError> {
        let (reply, outcome) = oneshot::channel();
        let request = WriteRequest {
            unit: self.unit,
            address,
            data,
            always_multiple: self.always_write_multiple,
            readback,
            reply,
        };
        self.requests
            .try_send(BusRequest::Write(request))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    RequestError::Link("bus busy: too many writes waiting".into())
                }
                mpsc::error::TrySendError::Closed(_) => RequestError::Link("bus stopped".into()),
            })?;
        outcome
            .await
            .map_err(|_| RequestError::Link("bus stopped".into()))?
    }

    /// Reopens the bus link and polls the device at once (a management "reboot").
    pub async fn reinitialize(&self) -> Result<(), RequestError> {
        let (done, finished) = oneshot::channel();
        self.requests
            .send(BusRequest::Reinitialize {
                unit: self.unit,
                done,
            })
            .await
            .map_err(|_| RequestError::Link("bus stopped".into()))?;
        finished
            .await
            .map_err(|_| RequestError::Link("bus stopped".into()))
    }
}

impl Gateway {
    /// Spawns one task per bus of `config` that has devices.
    pub fn start(config: &Config, sink: EventSink) -> Result<Gateway, StartError> {
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut buses = HashMap::new();
        let mut counters = Vec::new();
        for bus in &config.buses {
            let devices: Vec<&Device> = config
                .devices
                .iter()
                .filter(|d| d.bus == bus.name)
                .collect();
            if devices.is_empty() {
                tracing::warn!(bus = %bus.name, "bus has no devices; not started");
                continue;
            }
            let sink = sink.clone();
            let stop = shutdown.child_token();
            match &bus.transport {
                BusTransport::SerialLine { max_line, .. } => {
                    let settings = LineBusSettings {
                        name: bus.name.clone(),
                        serial: serial_settings(bus)
                            .expect("serial-line buses have serial settings"),
                        max_line: max_line.0 as usize,
                    };
                    let devices = devices
                        .into_iter()
                        .filter_map(|d| {
                            let parser = d.parser.clone()?;
                            Some(LineDevice::new(parser, device_state(d), LINE_SILENCE_CHECK))
                        })
                        .collect();
                    tasks.spawn(LineBus::new(settings, devices).run(sink, stop));
                }
                _ => {
                    let settings = bus_settings(bus);
                    let (requests, queued) = mpsc::channel(WRITE_QUEUE);
                    for device in &devices {
                        buses.insert(
                            device.id.clone(),
                            DeviceBus {
                                unit: device.unit.unwrap_or(1),
                                always_write_multiple: device.always_write_multiple,
                                requests: requests.clone(),
                            },
                        );
                    }
                    let devices: Vec<PolledDevice> = devices
                        .into_iter()
                        .map(polled_device)
                        .collect::<Result<_, _>>()?;
                    counters.extend(
                        devices
                            .iter()
                            .map(|d| (d.state.id().to_owned(), d.counters.clone())),
                    );
                    tasks.spawn(ModbusBus::new(settings, devices, queued).run(sink, stop));
                }
            }
        }
        Ok(Gateway {
            tasks,
            shutdown,
            buses,
            counters,
        })
    }

    /// Poll counters of every Modbus device.
    pub fn counters(&self) -> &[(String, Arc<DeviceCounters>)] {
        &self.counters
    }

    /// The bus of a Modbus device, for writes; `None` for unknown and serial-line devices.
    pub fn device_bus(&self, device_id: &str) -> Option<DeviceBus> {
        self.buses.get(device_id).cloned()
    }

    /// Stops every bus task (each finishes its current request first) and waits for them.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

fn serial_settings(bus: &Bus) -> Option<SerialSettings> {
    match &bus.transport {
        BusTransport::Rtu {
            port,
            baud,
            parity,
            data_bits,
            stop_bits,
            ..
        }
        | BusTransport::SerialLine {
            port,
            baud,
            parity,
            data_bits,
            stop_bits,
            ..
        } => Some(SerialSettings {
            port: port.clone(),
            baud: *baud,
            parity: (*parity).into(),
            data_bits: match data_bits {
                5 => tokio_serial::DataBits::Five,
                6 => tokio_serial::DataBits::Six,
                7 => tokio_serial::DataBits::Seven,
                _ => tokio_serial::DataBits::Eight,
            },
            stop_bits: if *stop_bits == 2 {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            },
        }),
        _ => None,
    }
}

/// The Modbus side of a bus's config.
pub fn bus_settings(bus: &Bus) -> BusSettings {
    let (endpoint, timeout, delay) = match &bus.transport {
        BusTransport::Rtu {
            timeout,
            delay_between_requests,
            ..
        } => (
            ModbusEndpoint::Rtu(serial_settings(bus).expect("rtu buses have serial settings")),
            *timeout,
            *delay_between_requests,
        ),
        BusTransport::Tcp {
            host,
            port,
            timeout,
            delay_between_requests,
        } => (
            ModbusEndpoint::Tcp {
                host: host.clone(),
                port: *port,
            },
            *timeout,
            *delay_between_requests,
        ),
        BusTransport::RtuOverTcp {
            host,
            port,
            timeout,
            delay_between_requests,
        } => (
            ModbusEndpoint::RtuOverTcp {
                host: host.clone(),
                port: *port,
            },
            *timeout,
            *delay_between_requests,
        ),
        BusTransport::SerialLine { .. } => unreachable!("serial-line buses carry no Modbus"),
    };
    BusSettings {
        name: bus.name.clone(),
        endpoint,
        timeout: *timeout,
        delay_between_requests: *delay,
    }
}

fn device_state(device: &Device) -> DeviceState {
    DeviceState::new(
        &device.id,
        &device.event,
        device.qos,
        PublishPolicy {
            mode: device.publish,
            heartbeat: device.heartbeat.map(|h| *h),
        },
    )
}

/// The tags of a Modbus device, in config order.
pub fn tags(device: &Device) -> Vec<Tag> {
    device
        .registers
        .iter()
        .map(|r| Tag {
            name: r.name.clone(),
            kind: r.kind,
            address: r.address,
            data_type: r.data_type,
            order: r.order,
            bit: r.bit,
            scale: r.scale,
            offset: r.offset,
            deadband: r.deadband,
            unit: r.unit.clone(),
        })
        .collect()
}

/// The reads that cover every tag of a Modbus device in the fewest requests.
pub fn read_plan(device: &Device, tags: &[Tag]) -> Result<Plan, PlanError> {
    let spans: Vec<Span> = tags
        .iter()
        .enumerate()
        .map(|(index, t)| Span {
            tag: index,
            kind: t.kind,
            address: t.address,
            count: if t.kind.is_bit() {
                1
            } else {
                t.data_type.register_count()
            },
        })
        .collect();
    plan(
        &spans,
        Limits {
            max_gap: device.max_gap,
            max_registers: device.max_request_registers,
            max_bits: device.max_request_bits,
        },
    )
}

fn polled_device(device: &Device) -> Result<PolledDevice, StartError> {
    let tags = tags(device);
    let plan = read_plan(device, &tags).map_err(|error| StartError::Plan {
        device: device.id.clone(),
        error,
    })?;
    Ok(PolledDevice::new(
        device.unit.unwrap_or(1),
        *device.poll,
        tags,
        plan.requests,
        device_state(device),
    ))
}

/// Why the gateway could not start (only for configs that skipped validation).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("device {device}: cannot plan its reads: {error}")]
    Plan { device: String, error: PlanError },
}
