//! A Modbus bus (RTU on a serial port, TCP, or RTU frames over TCP): opening the
//! link and running single requests with a deadline.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::prelude::{ExceptionCode, SlaveContext};
use tokio_modbus::Slave;

use super::link::{connect_tcp, open_serial, DiscardStaleInput, InputSinceRequest, SerialSettings};
use crate::registers::RegisterKind;

/// Where a Modbus bus is and how to reach it.
#[derive(Debug, Clone, PartialEq)]
pub enum ModbusEndpoint {
    Rtu(SerialSettings),
    Tcp { host: String, port: u16 },
    RtuOverTcp { host: String, port: u16 },
}

impl fmt::Display for ModbusEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModbusEndpoint::Rtu(s) => write!(f, "rtu {} @ {} baud", s.port, s.baud),
            ModbusEndpoint::Tcp { host, port } => write!(f, "tcp {host}:{port}"),
            ModbusEndpoint::RtuOverTcp { host, port } => write!(f, "rtu-over-tcp {host}:{port}"),
        }
    }
}

impl ModbusEndpoint {
    /// Opens the port or connection, within `timeout` for TCP. RTU links also give a
    /// count of the bytes received since the last request.
    pub async fn open(
        &self,
        timeout: Duration,
    ) -> io::Result<(Context, Option<InputSinceRequest>)> {
        Ok(match self {
            ModbusEndpoint::Rtu(settings) => {
                let link = DiscardStaleInput::new(open_serial(settings)?);
                let received = link.input_since_request();
                (tokio_modbus::client::rtu::attach(link), Some(received))
            }
            ModbusEndpoint::Tcp { host, port } => (
                tokio_modbus::client::tcp::attach(connect_tcp(host, *port, timeout).await?),
                None,
            ),
            ModbusEndpoint::RtuOverTcp { host, port } => {
                let link = DiscardStaleInput::new(connect_tcp(host, *port, timeout).await?);
                let received = link.input_since_request();
                (tokio_modbus::client::rtu::attach(link), Some(received))
            }
        })
    }

    /// Whether a timeout leaves the link usable. RTU links discard stale input
    /// before each request and answers carry no transaction id to confuse, so they
    /// stay open; a TCP connection may still deliver the late answer, so it is
    /// reopened.
    pub fn survives_timeout(&self) -> bool {
        matches!(self, ModbusEndpoint::Rtu(_))
    }
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadData {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// The slave answered with a Modbus exception: it is alive.
    #[error("Modbus exception {code:#04x} ({name})")]
    Exception { code: u8, name: String },
    #[error("timeout after {} ms", .0.as_millis())]
    Timeout(Duration),
    /// Bytes came back but never a valid frame.
    #[error("no valid answer within {} ms: {received} byte(s) of garbage or bad CRC received", .timeout.as_millis())]
    Garbled { timeout: Duration, received: u64 },
    /// The link failed or the answer was garbage (CRC, framing, mismatched header).
    #[error("{0}")]
    Link(String),
}

impl RequestError {
    fn exception(code: ExceptionCode) -> Self {
        RequestError::Exception {
            code: code.into(),
            name: code.to_string(),
        }
    }

    /// True when the device answered (the failure is in what was asked).
    pub fn is_exception(&self) -> bool {
        matches!(self, RequestError::Exception { .. })
    }

    /// True for "illegal data address", which a coalesced read spanning a hole in the
    /// device's register map gets.
    pub fn is_illegal_address(&self) -> bool {
        matches!(self, RequestError::Exception { code: 0x02, .. })
    }
}

/// The timeout of a bus's requests, on one timer for all of them: a request moves the
/// deadline, and the timer is set again only when it fires before it. A timer for each
/// request cost the runtime a wake-up of its own (an eventfd write) for most requests.
pub struct RequestDeadline {
    timeout: Duration,
    /// Made at the first request (a timer needs the runtime).
    timer: Option<Pin<Box<Sleep>>>,
}

impl RequestDeadline {
    pub fn new(timeout: Duration) -> Self {
        RequestDeadline {
            timeout,
            timer: None,
        }
    }

    /// What `request` gives, or `None` when it has not finished within the timeout.
    async fn within<F: Future>(&mut self, request: F) -> Option<F::Output> {
        let deadline = Instant::now() + self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        let mut request = std::pin::pin!(request);
        loop {
            tokio::select! {
                biased;
                output = &mut request => return Some(output),
                () = timer.as_mut() => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        }
    }

    /// Runs `request` within the timeout, its answer or what went wrong.
    async fn answer<T>(
        &mut self,
        request: impl Future<Output = tokio_modbus::Result<T>>,
    ) -> Result<T, RequestError> {
        match self.within(request).await {
            None => Err(RequestError::Timeout(self.timeout)),
            Some(Err(e)) => Err(RequestError::Link(e.to_string())),
            Some(Ok(Err(code))) => Err(RequestError::exception(code)),
            Some(Ok(Ok(value))) => Ok(value),
        }
    }
}

/// Reads `count` items of `kind` at `address` from `unit`, within `deadline`.
pub async fn read(
    ctx: &mut Context,
    unit: u8,
    kind: RegisterKind,
    address: u16,
    count: u16,
    deadline: &mut RequestDeadline,
) -> Result<ReadData, RequestError> {
    ctx.set_slave(Slave(unit));
    let data = match kind {
        RegisterKind::Coil => {
            ReadData::Bits(deadline.answer(ctx.read_coils(address, count)).await?)
        }
        RegisterKind::Discrete => ReadData::Bits(
            deadline
                .answer(ctx.read_discrete_inputs(address, count))
                .await?,
        ),
        RegisterKind::Holding => ReadData::Words(
            deadline
                .answer(ctx.read_holding_registers(address, count))
                .await?,
        ),
        RegisterKind::Input => ReadData::Words(
            deadline
                .answer(ctx.read_input_registers(address, count))
                .await?,
        ),
    };
    let got = match &data {
        ReadData::Words(w) => w.len(),
        // Bit answers are padded to whole bytes.
        ReadData::Bits(b) => b.len().min(count as usize),
    };
    if got != count as usize {
        return Err(RequestError::Link(format!(
            "answer has {got} items, {count} were asked"
        )));
    }
    Ok(match data {
        ReadData::Bits(mut bits) => {
            bits.truncate(count as usize);
            ReadData::Bits(bits)
        }
        words => words,
    })
}

/// A write to a coil or holding registers.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteData {
    Coils(Vec<bool>),
    Registers(Vec<u16>),
}

/// Writes `data` at `address` of `unit`: FC05/FC15 for coils, FC06/FC16 for
/// registers (FC16 even for one register when `always_multiple`, since many
/// devices reject FC06).
pub async fn write(
    ctx: &mut Context,
    unit: u8,
    address: u16,
    data: &WriteData,
    always_multiple: bool,
    deadline: &mut RequestDeadline,
) -> Result<(), RequestError> {
    ctx.set_slave(Slave(unit));
    match data {
        WriteData::Coils(bits) if bits.len() == 1 && !always_multiple => {
            deadline
                .answer(ctx.write_single_coil(address, bits[0]))
                .await
        }
        WriteData::Coils(bits) => {
            deadline
                .answer(ctx.write_multiple_coils(address, bits))
                .await
        }
        WriteData::Registers(words) if words.len() == 1 && !always_multiple => {
            deadline
                .answer(ctx.write_single_register(address, words[0]))
                .await
        }
        WriteData::Registers(words) => {
            deadline
                .answer(ctx.write_multiple_registers(address, words))
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each request has the whole timeout from its own start, though the timer was set
    /// for an earlier request's deadline.
    #[tokio::test]
    async fn every_request_gets_the_whole_timeout_from_its_start() {
        let timeout = Duration::from_millis(200);
        let mut deadline = RequestDeadline::new(timeout);
        let answered = deadline.within(tokio::time::sleep(Duration::from_millis(150)));
        assert_eq!(answered.await, Some(()));
        let start = Instant::now();
        let late = deadline.within(tokio::time::sleep(Duration::from_secs(30)));
        assert_eq!(late.await, None);
        let waited = start.elapsed();
        assert!(waited >= timeout, "timed out after {waited:?}");
        let quick = deadline.within(std::future::ready(7));
        assert_eq!(
            quick.await,
            Some(7),
            "an expired timer does not fail the next request"
        );
    }
}
