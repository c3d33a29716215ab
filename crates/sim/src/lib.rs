//! Simulated Modbus slaves, served over TCP, RTU-over-TCP or a serial port. The demo
//! runs on them, and tests use them as real peers of the gateway's buses.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::Service;

/// Every table of a simulated slave holds addresses `0..TABLE_SIZE`; reads beyond
/// answer "illegal data address" like a real device with a small map.
pub const TABLE_SIZE: usize = 4096;

#[derive(Debug)]
struct Tables {
    coils: Vec<bool>,
    discrete: Vec<bool>,
    holding: Vec<u16>,
    input: Vec<u16>,
    /// An input register that counts the reads of it (see [`SimSlave::count_reads`]).
    read_counter: Option<u16>,
}

/// One simulated slave: its four tables and a request counter. Cloning shares it.
#[derive(Debug, Clone)]
pub struct SimSlave {
    tables: Arc<Mutex<Tables>>,
    requests: Arc<AtomicU64>,
    silent: Arc<AtomicBool>,
    /// Every request is answered with this exception while set.
    failing: Arc<Mutex<Option<ExceptionCode>>>,
    delay_ms: Arc<AtomicU64>,
    last_write_function: Arc<std::sync::atomic::AtomicU8>,
}

impl Default for SimSlave {
    fn default() -> Self {
        SimSlave {
            tables: Arc::new(Mutex::new(Tables {
                coils: vec![false; TABLE_SIZE],
                discrete: vec![false; TABLE_SIZE],
                holding: vec![0; TABLE_SIZE],
                input: vec![0; TABLE_SIZE],
                read_counter: None,
            })),
            requests: Arc::new(AtomicU64::new(0)),
            silent: Arc::new(AtomicBool::new(false)),
            failing: Arc::default(),
            delay_ms: Arc::new(AtomicU64::new(0)),
            last_write_function: Arc::default(),
        }
    }
}

impl SimSlave {
    pub fn set_holding(&self, address: u16, words: &[u16]) {
        let mut t = self.tables.lock().expect("simulator lock");
        let start = address as usize;
        t.holding[start..start + words.len()].copy_from_slice(words);
    }

    pub fn set_input(&self, address: u16, words: &[u16]) {
        let mut t = self.tables.lock().expect("simulator lock");
        let start = address as usize;
        t.input[start..start + words.len()].copy_from_slice(words);
    }

    pub fn set_coil(&self, address: u16, value: bool) {
        self.tables.lock().expect("simulator lock").coils[address as usize] = value;
    }

    pub fn set_discrete(&self, address: u16, value: bool) {
        self.tables.lock().expect("simulator lock").discrete[address as usize] = value;
    }

    pub fn holding(&self, address: u16, count: u16) -> Vec<u16> {
        let t = self.tables.lock().expect("simulator lock");
        t.holding[address as usize..(address + count) as usize].to_vec()
    }

    /// The input register at `address` counts the reads that include it: each one
    /// answers the count so far, then adds one. Every reading of it is a distinct, next
    /// number, so a consumer can tell whether any was lost.
    pub fn count_reads(&self, address: u16) {
        self.tables.lock().expect("simulator lock").read_counter = Some(address);
    }

    /// The input register at `address`.
    pub fn input(&self, address: u16) -> u16 {
        self.tables.lock().expect("simulator lock").input[address as usize]
    }

    pub fn coil(&self, address: u16) -> bool {
        self.tables.lock().expect("simulator lock").coils[address as usize]
    }

    /// Requests answered or ignored so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// A silent slave ignores every request, like a powered-off device.
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::Relaxed);
    }

    /// A slave in a fault answers every request with `exception` (until `None`).
    pub fn set_failing(&self, exception: Option<ExceptionCode>) {
        *self.failing.lock().expect("simulator lock") = exception;
    }

    /// A slow slave answers only after `delay` (possibly after the master gave up).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    fn delay(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.delay_ms.load(Ordering::Relaxed))
    }

    /// The function code of the last write request (5, 6, 15 or 16), 0 before any.
    pub fn last_write_function(&self) -> u8 {
        self.last_write_function.load(Ordering::Relaxed)
    }

    fn handle(&self, request: Request<'_>) -> Option<Result<Response, ExceptionCode>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let function = match &request {
            Request::WriteSingleCoil(..) => 5,
            Request::WriteSingleRegister(..) => 6,
            Request::WriteMultipleCoils(..) => 15,
            Request::WriteMultipleRegisters(..) => 16,
            _ => 0,
        };
        if function != 0 {
            self.last_write_function.store(function, Ordering::Relaxed);
        }
        if self.silent.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(exception) = *self.failing.lock().expect("simulator lock") {
            return Some(Err(exception));
        }
        let mut t = self.tables.lock().expect("simulator lock");
        Some(apply(&mut t, request))
    }
}

fn range(address: u16, count: usize) -> Result<std::ops::Range<usize>, ExceptionCode> {
    let start = address as usize;
    if count == 0 || start + count > TABLE_SIZE {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(start..start + count)
}

fn apply(t: &mut Tables, request: Request<'_>) -> Result<Response, ExceptionCode> {
    Ok(match request {
        Request::ReadCoils(a, n) => Response::ReadCoils(t.coils[range(a, n.into())?].to_vec()),
        Request::ReadDiscreteInputs(a, n) => {
            Response::ReadDiscreteInputs(t.discrete[range(a, n.into())?].to_vec())
        }
        Request::ReadHoldingRegisters(a, n) => {
            Response::ReadHoldingRegisters(t.holding[range(a, n.into())?].to_vec())
        }
        Request::ReadInputRegisters(a, n) => {
            let read = range(a, n.into())?;
            let response = Response::ReadInputRegisters(t.input[read.clone()].to_vec());
            if let Some(counter) = t.read_counter.filter(|&c| read.contains(&usize::from(c))) {
                let count = &mut t.input[usize::from(counter)];
                *count = count.wrapping_add(1);
            }
            response
        }
        Request::WriteSingleCoil(a, v) => {
            t.coils[range(a, 1)?.start] = v;
            Response::WriteSingleCoil(a, v)
        }
        Request::WriteMultipleCoils(a, values) => {
            t.coils[range(a, values.len())?].copy_from_slice(&values);
            Response::WriteMultipleCoils(a, values.len() as u16)
        }
        Request::WriteSingleRegister(a, v) => {
            t.holding[range(a, 1)?.start] = v;
            Response::WriteSingleRegister(a, v)
        }
        Request::WriteMultipleRegisters(a, values) => {
            t.holding[range(a, values.len())?].copy_from_slice(&values);
            Response::WriteMultipleRegisters(a, values.len() as u16)
        }
        _ => return Err(ExceptionCode::IllegalFunction),
    })
}

/// The slaves reachable on one simulated bus, by unit id. Units not present never
/// answer (a dead or missing device).
#[derive(Debug, Clone, Default)]
pub struct SimBus {
    slaves: Arc<HashMap<u8, SimSlave>>,
}

impl SimBus {
    pub fn new(slaves: impl IntoIterator<Item = (u8, SimSlave)>) -> Self {
        SimBus {
            slaves: Arc::new(slaves.into_iter().collect()),
        }
    }
}

type Answer = Result<Option<Response>, ExceptionCode>;

impl Service for SimBus {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let Some(slave) = self.slaves.get(&req.slave) else {
            return Box::pin(std::future::ready(Ok(None)));
        };
        let answer = slave.handle(req.request).transpose();
        let delay = slave.delay();
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            answer
        })
    }
}

/// Accepts connections with a tokio-modbus TCP-side server type (`tcp::Server` or
/// `rtu_over_tcp::Server`, which share no trait) and serves `bus` on each.
macro_rules! serve_connections {
    ($server:path, $listener:expr, $bus:expr) => {{
        let bus = $bus;
        let on_connected = |stream, addr| {
            let bus = bus.clone();
            async move {
                tokio_modbus::server::tcp::accept_tcp_connection(stream, addr, move |_| {
                    Ok(Some(bus.clone()))
                })
            }
        };
        <$server>::new($listener)
            .serve(&on_connected, |e| {
                tracing::debug!("simulator connection: {e}")
            })
            .await
    }};
}

/// Serves Modbus TCP on `listener` until the task is dropped.
pub async fn serve_tcp(listener: TcpListener, bus: SimBus) -> io::Result<()> {
    serve_connections!(tokio_modbus::server::tcp::Server, listener, bus)
}

/// Serves `bus` over Modbus TCP on a free loopback port, in a task of the current
/// runtime; returns the port and the task.
pub async fn spawn_tcp(bus: SimBus) -> io::Result<(u16, JoinHandle<io::Result<()>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    Ok((port, tokio::spawn(serve_tcp(listener, bus))))
}

/// Serves Modbus RTU frames over TCP (a serial-to-Ethernet converter) on `listener`.
pub async fn serve_rtu_over_tcp(listener: TcpListener, bus: SimBus) -> io::Result<()> {
    serve_connections!(tokio_modbus::server::rtu_over_tcp::Server, listener, bus)
}

/// Serves Modbus RTU on a serial port (one end of a pty pair in tests and the demo).
pub async fn serve_rtu(port: tokio_serial::SerialStream, bus: SimBus) -> io::Result<()> {
    tokio_modbus::server::rtu::Server::new(port)
        .serve_forever(bus)
        .await
}
