//! The task of one serial-line bus: reads lines, hands each to the devices on the
//! bus, and reopens the port when it vanishes.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::framer::LineFramer;
use super::parser::{parse_line, ParseError};
use crate::backoff::Backoff;
use crate::bus::link::{open_serial, SerialSettings};
use crate::config::LineParser;
use crate::device::DeviceState;
use crate::event::{Event, EventSink};
use fieldbridge_service::LogThrottle;

/// A device on a serial-line bus.
#[derive(Debug)]
pub struct LineDevice {
    pub parser: LineParser,
    pub state: DeviceState,
    /// A device silent for `OFFLINE_AFTER_FAILURES` times this long goes offline.
    pub expected_interval: Duration,
    last_line: Instant,
    last_silence_check: Instant,
}

impl LineDevice {
    pub fn new(parser: LineParser, state: DeviceState, expected_interval: Duration) -> Self {
        let now = Instant::now();
        LineDevice {
            parser,
            state,
            expected_interval,
            last_line: now,
            last_silence_check: now,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LineBusSettings {
    pub name: String,
    pub serial: SerialSettings,
    pub max_line: usize,
}

pub struct LineBus {
    settings: LineBusSettings,
    devices: Vec<LineDevice>,
    garbage: LogThrottle,
    port_errors: LogThrottle,
}

impl LineBus {
    pub fn new(settings: LineBusSettings, devices: Vec<LineDevice>) -> Self {
        LineBus {
            settings,
            devices,
            garbage: LogThrottle::new(Duration::from_secs(60)),
            port_errors: LogThrottle::new(Duration::from_secs(60)),
        }
    }

    pub async fn run(mut self, sink: EventSink, shutdown: CancellationToken) {
        tracing::info!(bus = %self.settings.name, port = %self.settings.serial.port, "serial-line bus started");
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            let failure = match open_serial(&self.settings.serial) {
                Ok(port) => {
                    backoff.reset();
                    self.port_errors.reset();
                    tracing::info!(bus = %self.settings.name, "port open");
                    match self.read_lines(port, &sink, &shutdown).await {
                        Ok(()) => break,
                        Err(e) => e,
                    }
                }
                Err(e) => e.to_string(),
            };
            if self
                .port_errors
                .admit_changed(&failure, std::time::Instant::now())
                .is_some()
            {
                tracing::error!(bus = %self.settings.name, "{failure}");
            }
            let wall = time::OffsetDateTime::now_utc();
            let events: Vec<Event> = self
                .devices
                .iter_mut()
                .filter_map(|d| d.state.record_failure(&failure, wall))
                .collect();
            if !emit_all(&sink, events).await {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
        tracing::info!(bus = %self.settings.name, "serial-line bus stopped");
    }

    /// Reads until shutdown (`Ok`) or a port error (`Err` with the reason).
    async fn read_lines(
        &mut self,
        mut port: tokio_serial::SerialStream,
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let mut framer = LineFramer::new(self.settings.max_line);
        let mut buf = [0u8; 512];
        let tick = self
            .devices
            .iter()
            .map(|d| d.expected_interval)
            .min()
            .unwrap_or(Duration::from_secs(1));
        let mut silence_check = tokio::time::interval(tick);
        loop {
            let n = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = silence_check.tick() => {
                    let events = self.check_silence();
                    if !emit_all(sink, events).await {
                        return Ok(());
                    }
                    continue;
                }
                read = port.read(&mut buf) => match read {
                    Ok(0) => return Err(format!("{}: port closed", self.settings.serial.port)),
                    Ok(n) => n,
                    Err(e) => return Err(format!("{}: {e}", self.settings.serial.port)),
                },
            };
            let mut events = Vec::new();
            framer.push(&buf[..n], |line| match line {
                Ok(line) => events.extend(self.handle_line(line)),
                Err(e) => self.report_garbage(&e.to_string()),
            });
            if !emit_all(sink, events).await {
                return Ok(());
            }
        }
    }

    fn handle_line(&mut self, line: &str) -> Vec<Event> {
        let now = Instant::now();
        let wall = time::OffsetDateTime::now_utc();
        let mut events = Vec::new();
        let mut last_error = None;
        for device in &mut self.devices {
            match parse_line(&device.parser, line) {
                Ok(values) => {
                    device.last_line = now;
                    events.extend(device.state.record_values(
                        values,
                        |_| None,
                        now.into_std(),
                        wall,
                    ));
                }
                Err(e) => last_error = Some(e),
            }
        }
        if events.is_empty() {
            let reason = last_error.unwrap_or(ParseError::NoMatch);
            self.report_garbage(&format!("{reason}: {:?}", truncate(line, 80)));
        }
        events
    }

    /// One line per period whatever the garbage looks like (each line of it differs),
    /// with the count of what was held back since the last.
    fn report_garbage(&mut self, message: &str) {
        if let Some(repeats) = self.garbage.admit() {
            tracing::warn!(bus = %self.settings.name, repeats, "unusable input: {message}");
        }
    }

    /// Counts a failure for every device that has sent nothing usable for a while.
    fn check_silence(&mut self) -> Vec<Event> {
        let now = Instant::now();
        let wall = time::OffsetDateTime::now_utc();
        let mut events = Vec::new();
        for device in &mut self.devices {
            let quiet = now.duration_since(device.last_line);
            if quiet >= device.expected_interval
                && now.duration_since(device.last_silence_check) >= device.expected_interval
            {
                device.last_silence_check = now;
                let message = format!("no data for {} ms", quiet.as_millis());
                events.extend(device.state.record_failure(&message, wall));
            }
        }
        events
    }
}

fn truncate(line: &str, max: usize) -> &str {
    match line.char_indices().nth(max) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

async fn emit_all(sink: &EventSink, events: Vec<Event>) -> bool {
    for event in events {
        if !sink.emit(event).await {
            return false;
        }
    }
    true
}
