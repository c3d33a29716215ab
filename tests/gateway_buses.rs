//! The acquisition path against real peers: tokio-modbus slaves over TCP, RTU frames
//! over TCP, RTU on pty pairs, and a line-protocol device on a pty.

mod gateway_support;

use std::time::{Duration, Instant};

use fieldbridge_sim::{self as sim, SimBus, SimSlave};
use gateway_support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_serial::{SerialPort, SerialStream};

async fn tcp_sim(bus: SimBus) -> (u16, tokio::task::JoinHandle<std::io::Result<()>>) {
    sim::spawn_tcp(bus).await.unwrap()
}

#[tokio::test]
async fn tcp_device_values_are_decoded_with_the_planned_requests() {
    let plc = SimSlave::default();
    plc.set_holding(0, &f32_words(20.5));
    plc.set_holding(2, &[0b0000_0100]);
    plc.set_input(10, &[1234]);
    plc.set_coil(0, true);
    let (port, _server) = tcp_sim(SimBus::new([(1, plc.clone())])).await;
    let mut run = start(&format!(
        r#"
buses: [{{ name: plc, kind: tcp, host: 127.0.0.1, port: {port}, timeout: 1s }}]
devices:
  - id: boiler-1
    type: boiler
    bus: plc
    unit: 1
    poll: 100ms
    registers:
      - {{ name: temperature, kind: holding, address: 0, type: f32, order: ABCD }}
      - {{ name: flame, kind: holding, address: 2, type: bool, bit: 2 }}
      - {{ name: pressure, kind: input, address: 10, type: u16, scale: 0.01 }}
      - {{ name: pump_on, kind: coil, address: 0, type: bool }}
"#
    ));
    let (online, _) = next_health(&mut run.events, "boiler-1").await;
    assert!(online);
    let d = next_reading(&mut run.events, "boiler-1").await;
    assert_eq!(d["temperature"], 20.5);
    assert_eq!(d["flame"], true);
    assert_eq!(d["pressure"], 12.34);
    assert_eq!(d["pump_on"], true);

    // Three tables, three requests per cycle (holding 0..=2, input 10, coil 0).
    let before = plc.requests();
    for _ in 0..5 {
        next_reading(&mut run.events, "boiler-1").await;
    }
    let per_cycle = (plc.requests() - before) as f64 / 5.0;
    assert!(
        (2.5..=3.5).contains(&per_cycle),
        "{per_cycle} requests per cycle, expected 3"
    );
    run.gateway.shutdown().await;
}

#[tokio::test]
async fn rtu_over_tcp_device_is_polled() {
    let meter = SimSlave::default();
    meter.set_input(0, &[0x0001, 0x0002]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(sim::serve_rtu_over_tcp(listener, SimBus::new([(9, meter)])));
    let mut run = start(&format!(
        r#"
buses: [{{ name: converter, kind: rtu-over-tcp, host: 127.0.0.1, port: {port}, timeout: 1s }}]
devices:
  - {{ id: meter-9, type: meter, bus: converter, unit: 9, poll: 100ms, registers: [{{ name: energy, kind: input, address: 0, type: u32, order: CDAB }}] }}
"#
    ));
    let d = next_reading(&mut run.events, "meter-9").await;
    assert_eq!(d["energy"], 0x0002_0001u64);
    run.gateway.shutdown().await;
}

/// A pty pair: the simulated bus on one end, the gateway opens the other by name.
fn pty_bus(bus: SimBus) -> (String, SerialStream) {
    let (bus_end, gateway_end) = SerialStream::pair().expect("pty pair");
    let name = gateway_end.name().expect("pty has a name");
    tokio::spawn(sim::serve_rtu(bus_end, bus));
    (name, gateway_end)
}

#[tokio::test]
async fn dead_slave_does_not_stall_the_live_one_on_the_same_rtu_bus() {
    let live = SimSlave::default();
    live.set_holding(0, &[42]);
    let dead = SimSlave::default();
    dead.set_silent(true);
    let (port, _keep) = pty_bus(SimBus::new([(1, live.clone()), (2, dead.clone())]));
    let mut run = start(&format!(
        r#"
buses: [{{ name: rs485, kind: rtu, port: "{port}", baud: 19200, timeout: 100ms, delay_between_requests: 2ms }}]
devices:
  - {{ id: live, type: t, bus: rs485, unit: 1, poll: 200ms, registers: [{{ name: v, kind: holding, address: 0, type: u16 }}] }}
  - {{ id: dead, type: t, bus: rs485, unit: 2, poll: 200ms, registers: [{{ name: v, kind: holding, address: 0, type: u16 }}] }}
"#
    ));
    let (online, error) = next_health(&mut run.events, "dead").await;
    assert!(!online);
    assert_eq!(error.as_deref(), Some("timeout after 100 ms"));

    // Once the dead slave is backed off, the live one keeps its 200 ms rate (plus at
    // most the dead one's 100 ms timeout per cycle).
    next_reading(&mut run.events, "live").await;
    let started = Instant::now();
    let dead_before = dead.requests();
    for _ in 0..10 {
        let d = next_reading(&mut run.events, "live").await;
        assert_eq!(d["v"], 42);
    }
    let per_cycle = started.elapsed() / 10;
    assert!(
        per_cycle < Duration::from_millis(450),
        "live slave polled every {per_cycle:?}"
    );
    let dead_polls = dead.requests() - dead_before;
    assert!(
        dead_polls < 6,
        "dead slave polled {dead_polls} times in 10 live cycles; expected backoff"
    );
    run.gateway.shutdown().await;
}

#[tokio::test]
async fn a_late_rtu_answer_is_not_taken_for_the_next_one() {
    let slow = SimSlave::default();
    slow.set_holding(0, &[111]);
    slow.set_delay(Duration::from_millis(150));
    let fast = SimSlave::default();
    fast.set_holding(0, &[222]);
    let (port, _keep) = pty_bus(SimBus::new([(1, slow), (2, fast)]));
    let mut run = start(&format!(
        r#"
buses: [{{ name: rs485, kind: rtu, port: "{port}", baud: 19200, timeout: 100ms, delay_between_requests: 100ms }}]
devices:
  - {{ id: slow, type: t, bus: rs485, unit: 1, poll: 100ms, registers: [{{ name: v, kind: holding, address: 0, type: u16 }}] }}
  - {{ id: fast, type: t, bus: rs485, unit: 2, poll: 100ms, registers: [{{ name: v, kind: holding, address: 0, type: u16 }}] }}
"#
    ));
    let mut readings = 0;
    wait_for(
        &mut run.events,
        "ten readings of the fast slave",
        |device, id, p| {
            match (device, id) {
                ("fast", "status") => {
                    assert_eq!(
                        p["d"]["v"], 222,
                        "a stale answer was taken for the fast slave's"
                    );
                    readings += 1;
                }
                ("fast", "health") => assert_eq!(p["d"]["online"], true, "fast slave failed: {p}"),
                ("slow", "status") => panic!("the slow slave's late answer was accepted: {p}"),
                _ => {}
            }
            (readings >= 10).then_some(())
        },
    )
    .await;
    run.gateway.shutdown().await;
}

#[tokio::test]
async fn missing_serial_port_marks_devices_offline_and_others_keep_going() {
    let plc = SimSlave::default();
    plc.set_holding(0, &[7]);
    let (port, _server) = tcp_sim(SimBus::new([(1, plc)])).await;
    let mut run = start(&format!(
        r#"
buses:
  - {{ name: gone, kind: rtu, port: /dev/ttyNOSUCHPORT0, baud: 9600, timeout: 100ms }}
  - {{ name: plc, kind: tcp, host: 127.0.0.1, port: {port}, timeout: 1s }}
devices:
  - {{ id: lost, type: t, bus: gone, unit: 1, poll: 50ms, registers: [{{ name: v, kind: holding, address: 0, type: u16 }}] }}
  - {{ id: fine, type: t, bus: plc, unit: 1, poll: 50ms, registers: [{{ name: v, kind: holding, address: 0, type: u16 }}] }}
"#
    ));
    let (online, error) = next_health(&mut run.events, "lost").await;
    assert!(!online);
    let error = error.unwrap();
    assert!(error.contains("/dev/ttyNOSUCHPORT0"), "{error}");
    assert_eq!(next_reading(&mut run.events, "fine").await["v"], 7);
    run.gateway.shutdown().await;
}

#[tokio::test]
async fn modbus_exceptions_are_survived_and_holes_split_the_read() {
    let plc = SimSlave::default();
    plc.set_holding(4090, &[5]);
    let (port, _server) = tcp_sim(SimBus::new([(1, plc)])).await;
    // 4100 lies past the simulated map: the coalesced read 4090..=4100 is refused,
    // split, and the readable tag keeps being published.
    let mut run = start(&format!(
        r#"
buses: [{{ name: plc, kind: tcp, host: 127.0.0.1, port: {port}, timeout: 1s }}]
devices:
  - id: partial
    type: t
    bus: plc
    unit: 1
    poll: 50ms
    registers:
      - {{ name: ok, kind: holding, address: 4090, type: u16 }}
      - {{ name: missing, kind: holding, address: 4100, type: u16 }}
"#
    ));
    let (online, _) = next_health(&mut run.events, "partial").await;
    assert!(online);
    for _ in 0..3 {
        let d = next_reading(&mut run.events, "partial").await;
        assert_eq!(d["ok"], 5);
        assert!(d.get("missing").is_none());
    }
    run.gateway.shutdown().await;
}

/// A device that answers every read with an exception is reachable but gives nothing:
/// it goes offline with the exception named, and back online when it answers again.
#[tokio::test]
async fn a_device_answering_only_exceptions_is_reported_offline() {
    let plc = SimSlave::default();
    plc.set_holding(0, &[3]);
    let (port, _server) = tcp_sim(SimBus::new([(1, plc.clone())])).await;
    let mut run = start(&format!(
        r#"
buses: [{{ name: plc, kind: tcp, host: 127.0.0.1, port: {port}, timeout: 1s }}]
devices:
  - {{ id: faulty, type: t, bus: plc, unit: 1, poll: 50ms, registers: [{{ name: v, kind: holding, address: 0, type: u16 }}] }}
"#
    ));
    assert!(next_health(&mut run.events, "faulty").await.0);
    plc.set_failing(Some(tokio_modbus::ExceptionCode::ServerDeviceFailure));
    let (online, error) = next_health(&mut run.events, "faulty").await;
    assert!(!online);
    let error = error.expect("the reason");
    assert!(
        error.contains("every read answered with an exception"),
        "{error}"
    );
    plc.set_failing(None);
    assert!(next_health(&mut run.events, "faulty").await.0);
    assert_eq!(next_reading(&mut run.events, "faulty").await["v"], 3);
    run.gateway.shutdown().await;
}

#[tokio::test]
async fn tcp_link_loss_goes_offline_and_recovers() {
    let plc = SimSlave::default();
    plc.set_holding(0, &[1]);
    let (port, server) = tcp_sim(SimBus::new([(1, plc.clone())])).await;
    let mut run = start(&format!(
        r#"
buses: [{{ name: plc, kind: tcp, host: 127.0.0.1, port: {port}, timeout: 200ms }}]
devices:
  - {{ id: plc-1, type: t, bus: plc, unit: 1, poll: 50ms, registers: [{{ name: v, kind: holding, address: 0, type: u16 }}] }}
"#
    ));
    assert!(next_health(&mut run.events, "plc-1").await.0);
    server.abort();
    let _ = server.await;
    let (online, _) = next_health(&mut run.events, "plc-1").await;
    assert!(!online);

    plc.set_holding(0, &[2]);
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(sim::serve_tcp(listener, SimBus::new([(1, plc)])));
    assert!(next_health(&mut run.events, "plc-1").await.0);
    assert_eq!(next_reading(&mut run.events, "plc-1").await["v"], 2);
    run.gateway.shutdown().await;
}

#[tokio::test]
async fn serial_line_device_survives_garbage_and_over_long_lines() {
    let (mut device_end, gateway_end) = SerialStream::pair().expect("pty pair");
    let port = gateway_end.name().unwrap();
    let mut run = start(&format!(
        r#"
buses: [{{ name: gps, kind: serial-line, port: "{port}", baud: 4800, max_line: 128 }}]
devices:
  - id: gps-1
    type: gps
    bus: gps
    event: position
    qos: 0
    parser: {{ regex: '^\$GPGGA,(?P<utc>[^,]*),(?P<lat>[^,]*),(?P<ns>[NS]),(?P<lon>[^,]*),(?P<ew>[EW])', fields: {{ lat: f64, lon: f64 }} }}
"#
    ));
    let long_line = vec![b'x'; 1000];
    device_end.write_all(b"\xff\xfe garbage\r\n").await.unwrap();
    device_end.write_all(&long_line).await.unwrap();
    device_end
        .write_all(b"\r\n$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n")
        .await
        .unwrap();
    let d = wait_for(&mut run.events, "a position", |dev, id, p| {
        (dev == "gps-1" && id == "position").then(|| p["d"].clone())
    })
    .await;
    assert_eq!(d["lat"], 4807.038);
    assert_eq!(d["lon"], 1131.0);
    assert_eq!(d["ns"], "N");
    // Still parsing after the garbage.
    device_end
        .write_all(b"$GPGGA,123520,4807.040,N,01131.002,E\n")
        .await
        .unwrap();
    let d = wait_for(&mut run.events, "a second position", |dev, id, p| {
        (dev == "gps-1" && id == "position").then(|| p["d"].clone())
    })
    .await;
    assert_eq!(d["utc"], "123520");
    run.gateway.shutdown().await;
}

/// Modbus RTU CRC-16 (polynomial 0xA001, initial 0xFFFF), low byte first on the wire.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[tokio::test]
async fn crc_errors_are_reported_and_the_bus_recovers() {
    use tokio::io::AsyncReadExt;
    let (mut slave_end, gateway_end) = SerialStream::pair().expect("pty pair");
    let port = gateway_end.name().unwrap();
    // A hand-written slave: the first answers carry a broken CRC, later ones are good.
    tokio::spawn(async move {
        let mut answered = 0u32;
        let mut request = [0u8; 8];
        while slave_end.read_exact(&mut request).await.is_ok() {
            let mut frame = vec![request[0], 0x03, 0x02, 0x01, 0x2C];
            let crc = crc16(&frame);
            frame.extend_from_slice(&crc.to_le_bytes());
            if answered < 4 {
                let last = frame.len() - 1;
                frame[last] ^= 0xFF;
            }
            answered += 1;
            slave_end.write_all(&frame).await.unwrap();
        }
    });
    let mut run = start(&format!(
        r#"
buses: [{{ name: rs485, kind: rtu, port: "{port}", baud: 9600, timeout: 200ms }}]
devices:
  - {{ id: noisy, type: t, bus: rs485, unit: 3, poll: 50ms, registers: [{{ name: v, kind: holding, address: 0, type: u16 }}] }}
"#
    ));
    let (online, error) = next_health(&mut run.events, "noisy").await;
    assert!(
        !online,
        "three broken answers in a row mark the device offline"
    );
    let error = error.unwrap();
    assert!(error.contains("garbage or bad CRC"), "{error}");
    assert!(next_health(&mut run.events, "noisy").await.0);
    assert_eq!(next_reading(&mut run.events, "noisy").await["v"], 300);
    run.gateway.shutdown().await;
}

#[tokio::test]
async fn writes_use_single_or_multiple_function_codes_as_configured() {
    use fieldbridge::bus::modbus::WriteData;
    let (plc, single) = (SimSlave::default(), SimSlave::default());
    let (port, _server) = tcp_sim(SimBus::new([(1, plc.clone()), (2, single.clone())])).await;
    let run = start(&format!(
        r#"
buses: [{{ name: plc, kind: tcp, host: 127.0.0.1, port: {port}, timeout: 1s }}]
devices:
  - {{ id: strict, type: t, bus: plc, unit: 1, always_write_multiple: true, registers: [{{ name: v, kind: holding, address: 0, type: u16 }}] }}
  - {{ id: plain, type: t, bus: plc, unit: 2, registers: [{{ name: v, kind: holding, address: 0, type: u16 }}] }}
"#
    ));
    let strict = run.gateway.device_bus("strict").unwrap();
    let plain = run.gateway.device_bus("plain").unwrap();
    for (bus, slave, data, function) in [
        (&strict, &plc, WriteData::Registers(vec![7]), 16),
        (&strict, &plc, WriteData::Coils(vec![true]), 15),
        (&plain, &single, WriteData::Registers(vec![8]), 6),
        (&plain, &single, WriteData::Coils(vec![true]), 5),
        (&plain, &single, WriteData::Registers(vec![1, 2]), 16),
    ] {
        bus.write(4, data, None).await.unwrap();
        assert_eq!(slave.last_write_function(), function);
    }
    assert_eq!(plc.holding(4, 1), [7]);
    assert_eq!(single.holding(4, 2), [1, 2]);
    run.gateway.shutdown().await;
}
