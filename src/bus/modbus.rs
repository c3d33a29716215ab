//! A Modbus bus (RTU on a serial port, TCP, or RTU frames over TCP): opening the
//! link and running single requests with a deadline.

use std::fmt;
use std::io;
use std::time::Duration;

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

fn flatten<T>(
    outcome: Result<tokio_modbus::Result<T>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> Result<T, RequestError> {
    match outcome {
        Err(_) => Err(RequestError::Timeout(timeout)),
        Ok(Err(e)) => Err(RequestError::Link(e.to_string())),
        Ok(Ok(Err(code))) => Err(RequestError::exception(code)),
        Ok(Ok(Ok(value))) => Ok(value),
    }
}

/// Reads `count` items of `kind` at `address` from `unit`, within `timeout`.
pub async fn read(
    ctx: &mut Context,
    unit: u8,
    kind: RegisterKind,
    address: u16,
    count: u16,
    timeout: Duration,
) -> Result<ReadData, RequestError> {
    ctx.set_slave(Slave(unit));
    let data = match kind {
        RegisterKind::Coil => ReadData::Bits(flatten(
            tokio::time::timeout(timeout, ctx.read_coils(address, count)).await,
            timeout,
        )?),
        RegisterKind::Discrete => ReadData::Bits(flatten(
            tokio::time::timeout(timeout, ctx.read_discrete_inputs(address, count)).await,
            timeout,
        )?),
        RegisterKind::Holding => ReadData::Words(flatten(
            tokio::time::timeout(timeout, ctx.read_holding_registers(address, count)).await,
            timeout,
        )?),
        RegisterKind::Input => ReadData::Words(flatten(
            tokio::time::timeout(timeout, ctx.read_input_registers(address, count)).await,
            timeout,
        )?),
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
    timeout: Duration,
) -> Result<(), RequestError> {
    ctx.set_slave(Slave(unit));
    let outcome = match data {
        WriteData::Coils(bits) if bits.len() == 1 && !always_multiple => {
            tokio::time::timeout(timeout, ctx.write_single_coil(address, bits[0])).await
        }
        WriteData::Coils(bits) => {
            tokio::time::timeout(timeout, ctx.write_multiple_coils(address, bits)).await
        }
        WriteData::Registers(words) if words.len() == 1 && !always_multiple => {
            tokio::time::timeout(timeout, ctx.write_single_register(address, words[0])).await
        }
        WriteData::Registers(words) => {
            tokio::time::timeout(timeout, ctx.write_multiple_registers(address, words)).await
        }
    };
    flatten(outcome, timeout)
}
