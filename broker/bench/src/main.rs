//! `fieldbridge-bench`: an MQTT 3.1.1 load generator for fieldbridge-broker or any other
//! broker. Publishers send timestamped messages (flat out or at a fixed rate), subscribers
//! count them and time them; or it holds many idle connections and reports the broker's
//! memory per connection.

mod client;
mod report;
mod stamp;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use fieldbridge_mqtt::codec::{ProtocolVersion, QoS};
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use client::{
    Clock, ConnectOptions, Failures, LatencyWindow, PublishPlan, PublisherCounters, Session,
};
use report::{IdleReport, Latency, LoadReport};

/// Longest string MQTT can carry (two-byte length prefix).
const MAX_STRING: usize = u16::MAX as usize;

#[derive(Debug, Parser)]
#[command(
    name = "fieldbridge-bench",
    version,
    about = "MQTT 3.1.1 and 5 load generator: throughput, latency, losses and memory per connection",
    after_help = "Publisher i publishes on PREFIX/RUN/i; every subscriber subscribes to PREFIX/RUN/# and so \
                  receives every message. Latency is measured only with --rate (a flat-out run's \
                  latency is queueing)."
)]
struct Cli {
    /// The broker's host name or address.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The broker's plain MQTT port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// MQTT version of every connection: 3.1.1 (also `4`) or 5.
    #[arg(long, default_value = "3.1.1", value_parser = parse_protocol)]
    protocol: ProtocolVersion,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribing connections; each receives every publisher's messages.
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// QoS of the publications and subscriptions (0 or 1).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Payload size in bytes (at least 20: publisher, sequence number and send time).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Messages per second of each publisher; without it publishers go flat out.
    #[arg(long, value_name = "MSGS_PER_S")]
    rate: Option<f64>,
    /// Measurement window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Publishing before the window opens; its messages count for losses only.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Topics are PREFIX/RUN/PUBLISHER, with RUN random for each run, so that traffic
    /// left over from an earlier run never counts.
    #[arg(long, default_value = "bench")]
    topic_prefix: String,
    /// Socket send buffer of each publisher, in bytes (bounds what a flat-out publisher
    /// leaves in the kernel; 0 keeps the system's automatic sizing).
    #[arg(long, default_value_t = 65_536)]
    publisher_send_buffer: u32,
    /// QoS 1 messages each publisher may have awaiting PUBACK.
    #[arg(long, default_value_t = 32)]
    inflight: usize,
    /// Opens K idle connections, holds them for --duration and reports; no messages.
    #[arg(long, value_name = "K")]
    connections_only: Option<usize>,
    /// Reports this process's resident memory before and after opening the idle
    /// connections (the broker's PID; with --connections-only).
    #[arg(long, value_name = "PID")]
    rss_pid: Option<u32>,
    /// User name sent in every CONNECT.
    #[arg(long)]
    username: Option<String>,
    /// Password sent in every CONNECT (needs --username).
    #[arg(long)]
    password: Option<String>,
    /// Keepalive announced in CONNECT; clients ping every half of it.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    keepalive: Duration,
    /// Time for one connection's CONNECT/CONNACK (and SUBSCRIBE/SUBACK).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// After publishing stops: how long subscribers may go without receiving anything
    /// before the missing messages count as lost (and QoS 1 publishers wait for PUBACKs).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Longest wait for subscribers after publishing stops; what has not arrived by then
    /// is reported as undelivered (flat-out runs can leave much in socket buffers).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_max: Duration,
    /// Hard limit for the whole run; default: warm-up + duration + drain + drain-max + 120 s.
    #[arg(long, value_parser = humantime::parse_duration)]
    deadline: Option<Duration>,
    /// Worker threads of the generator (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Prints the result as one JSON object.
    #[arg(long)]
    json: bool,
}

impl Cli {
    fn validate(&self) -> anyhow::Result<()> {
        if self.payload < stamp::PAYLOAD_HEADER {
            bail!("--payload must be at least {} bytes", stamp::PAYLOAD_HEADER);
        }
        if self.payload > 256 * 1024 * 1024 - 64 * 1024 {
            bail!("--payload is larger than an MQTT packet can carry");
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("--rate must be a positive number of messages per second");
            }
        }
        if self.connections_only.is_none() && (self.publishers == 0 || self.subscribers == 0) {
            bail!("--publishers and --subscribers must be at least 1");
        }
        if self.publishers > u32::MAX as usize {
            bail!("--publishers is too large");
        }
        if self.inflight == 0 || self.inflight > 65_000 {
            bail!("--inflight must be between 1 and 65000");
        }
        if self.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        if self.duration.is_zero() {
            bail!("--duration must be more than 0");
        }
        if self.keepalive < Duration::from_secs(2) || self.keepalive.as_secs() > 65_535 {
            bail!("--keepalive must be between 2s and 65535s");
        }
        if self.topic_prefix.is_empty()
            || self.topic_prefix.contains(['+', '#', '\0'])
            || self.topic_prefix.len() > 60_000
        {
            bail!("--topic-prefix must be a non-empty topic without wildcards");
        }
        for (name, value) in [
            ("--username", &self.username),
            ("--password", &self.password),
        ] {
            if value.as_ref().is_some_and(|value| value.len() > MAX_STRING) {
                bail!("{name} is longer than MQTT allows");
            }
        }
        if self.password.is_some() && self.username.is_none() {
            bail!("--password needs --username (MQTT 3.1.1)");
        }
        Ok(())
    }

    fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            address: format!("{}:{}", self.host, self.port),
            protocol: self.protocol,
            username: self.username.clone(),
            password: self.password.clone(),
            keepalive: self.keepalive,
            timeout: self.connect_timeout,
            // Room for the topic and headers beyond the payload, and for stray messages.
            max_packet: (self.payload + self.topic_prefix.len() + 1024).max(64 * 1024),
            send_buffer: None,
        }
    }

    fn deadline(&self) -> Duration {
        self.deadline.unwrap_or(
            self.warmup + self.duration + self.drain + self.drain_max + Duration::from_secs(120),
        )
    }
}

fn parse_protocol(text: &str) -> Result<ProtocolVersion, String> {
    match text {
        "3.1.1" | "4" => Ok(ProtocolVersion::V311),
        "5" | "5.0" => Ok(ProtocolVersion::V5),
        other => Err(format!("{other:?}: 3.1.1 or 5")),
    }
}

fn protocol_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V5 => "5",
        _ => "3.1.1",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = cli.validate() {
        eprintln!("fieldbridge-bench: {error:#}");
        return ExitCode::from(2);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fieldbridge-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.connections_only {
            Some(count) => run_idle(&cli, count).await.map(|report| {
                print(&cli, &report, report.render());
                report.deadline_reached
            }),
            None => run_load(&cli).await.map(|report| {
                print(&cli, &report, report.render());
                report.deadline_reached
            }),
        }
    });
    // Tasks still blocked on a stuck broker must not hold the process.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => ExitCode::from(3),
        Err(error) => {
            eprintln!("fieldbridge-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print(cli: &Cli, report: &impl serde::Serialize, text: String) {
    if cli.json {
        match serde_json::to_string(report) {
            Ok(json) => println!("{json}"),
            Err(error) => eprintln!("fieldbridge-bench: cannot encode the report: {error}"),
        }
    } else {
        print!("{text}");
    }
}

/// Opens `count` sessions, `concurrency` at a time; the first failure ends the attempt.
async fn open_sessions(
    options: &ConnectOptions,
    count: usize,
    concurrency: usize,
    client_id: impl Fn(usize) -> String,
    subscribe: Option<(&str, QoS)>,
    deadline: Instant,
) -> anyhow::Result<Vec<Session>> {
    let attempts = futures::stream::iter(0..count)
        .map(|index| {
            let id = client_id(index);
            async move {
                Session::open(options, &id, subscribe)
                    .await
                    .with_context(|| format!("{id} cannot connect to {}", options.address))
            }
        })
        .buffered(concurrency)
        .try_collect::<Vec<_>>();
    tokio::time::timeout_at(deadline.into(), attempts)
        .await
        .context("the deadline passed while connecting")?
}

fn client_prefix() -> String {
    format!("fbb{}", std::process::id())
}

async fn run_load(cli: &Cli) -> anyhow::Result<LoadReport> {
    let began = Instant::now();
    let deadline = began + cli.deadline();
    let clock = Clock::new();
    let options = cli.connect_options();
    let qos = QoS::try_from(cli.qos)?;
    let prefix = client_prefix();
    let run = format!("{}/{:08x}", cli.topic_prefix, rand::random::<u32>());
    let filter = format!("{run}/#");
    let subscriptions = open_sessions(
        &options,
        cli.subscribers,
        cli.connect_concurrency,
        |index| format!("{prefix}-s{index}"),
        Some((&filter, qos)),
        deadline,
    )
    .await?;
    let publisher_options = ConnectOptions {
        send_buffer: (cli.publisher_send_buffer > 0).then_some(cli.publisher_send_buffer),
        ..options.clone()
    };
    let publications = open_sessions(
        &publisher_options,
        cli.publishers,
        cli.connect_concurrency,
        |index| format!("{prefix}-p{index}"),
        None,
        deadline,
    )
    .await?;
    let connect_secs = began.elapsed().as_secs_f64();

    // Give every task time to be spawned before the first message.
    let start = Instant::now() + Duration::from_millis(200);
    let window_start = start + cli.warmup;
    let end = window_start + cli.duration;
    let latency_window = cli.rate.map(|_| LatencyWindow {
        from_nanos: clock.nanos_at(window_start),
        to_nanos: clock.nanos_at(end),
    });
    let failures = Arc::new(Failures::default());
    let stop = CancellationToken::new();
    let _stop_all = stop.clone().drop_guard();

    let mut received = Vec::with_capacity(cli.subscribers);
    let mut subscriber_tasks = Vec::with_capacity(cli.subscribers);
    for (index, session) in subscriptions.into_iter().enumerate() {
        let counter = Arc::new(AtomicU64::new(0));
        received.push(Arc::clone(&counter));
        let failures = Arc::clone(&failures);
        let task = client::subscribe(
            session,
            cli.publishers,
            counter,
            clock,
            latency_window,
            cli.keepalive,
            stop.clone(),
        );
        subscriber_tasks.push(tokio::spawn(async move {
            let (report, result) = task.await;
            if let Err(error) = result {
                failures.record(&format!("subscriber {index}"), &error);
            }
            report
        }));
    }
    let plan = PublishPlan {
        qos,
        rate: cli.rate,
        inflight: cli.inflight,
        start,
        end,
        drain: cli.drain,
        keepalive: cli.keepalive,
    };
    let mut publisher_counters = Vec::with_capacity(cli.publishers);
    let mut publisher_tasks = Vec::with_capacity(cli.publishers);
    for (index, session) in publications.into_iter().enumerate() {
        let counters = Arc::new(PublisherCounters::default());
        publisher_counters.push(Arc::clone(&counters));
        let failures = Arc::clone(&failures);
        let topic = format!("{run}/{index}");
        // Fixed-rate publishers start out of step so their messages do not come in bursts.
        let mut plan = plan;
        if let Some(rate) = cli.rate {
            let phase = index as f64 / cli.publishers as f64 / rate;
            plan.start += Duration::from_secs_f64(phase.min(1.0));
        }
        let task = client::publish(
            session,
            index as u32,
            topic,
            cli.payload,
            plan,
            clock,
            counters,
        );
        publisher_tasks.push(tokio::spawn(async move {
            if let Err(error) = task.await {
                failures.record(&format!("publisher {index}"), &error);
            }
        }));
    }

    let totals = |counters: &[Arc<PublisherCounters>], received: &[Arc<AtomicU64>]| Totals {
        sent: counters
            .iter()
            .map(|c| c.sent.load(Ordering::Relaxed))
            .sum(),
        acked: counters
            .iter()
            .map(|c| c.acked.load(Ordering::Relaxed))
            .sum(),
        received: received.iter().map(|r| r.load(Ordering::Relaxed)).sum(),
    };
    let mut deadline_reached = false;
    tokio::time::sleep_until(window_start.into()).await;
    let at_window_start = totals(&publisher_counters, &received);
    tokio::time::sleep_until(end.into()).await;
    let at_window_end = totals(&publisher_counters, &received);
    let window_secs = end.duration_since(window_start).as_secs_f64();

    // Publishers stop by themselves at `end`; QoS 1 ones wait up to `drain` for PUBACKs.
    let publishers_done = end + cli.drain + Duration::from_secs(2);
    for task in publisher_tasks {
        if tokio::time::timeout_at(publishers_done.min(deadline).into(), task)
            .await
            .is_err()
        {
            deadline_reached |= Instant::now() >= deadline;
            break;
        }
    }
    let sent_by: Vec<u64> = publisher_counters
        .iter()
        .map(|c| c.sent.load(Ordering::Relaxed))
        .collect();
    let sent_total: u64 = sent_by.iter().sum();
    // Subscribers drain until they have everything, receive nothing for `drain`, or
    // `drain_max` has passed.
    let drain_until = (Instant::now() + cli.drain_max).min(deadline);
    let mut last_progress = Instant::now();
    let mut last_sum = 0;
    let mut drain_cut_short = false;
    loop {
        let counts: Vec<u64> = received.iter().map(|r| r.load(Ordering::Relaxed)).collect();
        if counts.iter().all(|&count| count >= sent_total) {
            break;
        }
        let sum: u64 = counts.iter().sum();
        if sum != last_sum {
            last_sum = sum;
            last_progress = Instant::now();
        } else if last_progress.elapsed() >= cli.drain {
            break;
        }
        if Instant::now() >= drain_until {
            drain_cut_short = true;
            break;
        }
        if Instant::now() >= deadline {
            deadline_reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let mut latency = client::latency_histogram();
    let mut report = LoadReport {
        broker: options.address.clone(),
        publishers: cli.publishers,
        subscribers: cli.subscribers,
        protocol: protocol_name(cli.protocol).to_owned(),
        qos: cli.qos,
        payload_bytes: cli.payload,
        rate_per_publisher: cli.rate,
        warmup_secs: cli.warmup.as_secs_f64(),
        window_secs,
        connect_secs,
        sent_per_sec: (at_window_end.sent - at_window_start.sent) as f64 / window_secs,
        acked_per_sec: (cli.qos > 0)
            .then(|| (at_window_end.acked - at_window_start.acked) as f64 / window_secs),
        received_per_sec: (at_window_end.received - at_window_start.received) as f64 / window_secs,
        sent_total,
        acked_total: (cli.qos > 0).then(|| {
            publisher_counters
                .iter()
                .map(|c| c.acked.load(Ordering::Relaxed))
                .sum()
        }),
        received_total: 0,
        expected_per_subscriber: sent_total,
        lost_total: 0,
        undelivered_total: 0,
        subscribers_short: 0,
        min_received_per_subscriber: u64::MAX,
        max_received_per_subscriber: 0,
        out_of_order_or_duplicate: 0,
        foreign_messages: 0,
        latency: None,
        connections_failed: 0,
        first_failure: None,
        drain_cut_short,
        delivered_per_sec_overall: 0.0,
        bench_cpu_secs: 0.0,
        deadline_reached,
    };
    let mut last_received_nanos = 0;
    let collect_until = (Instant::now() + Duration::from_secs(5)).min(deadline.max(Instant::now()));
    for task in subscriber_tasks {
        let Ok(Ok(subscriber)) = tokio::time::timeout_at(collect_until.into(), task).await else {
            report.subscribers_short += 1;
            report.undelivered_total += sent_total;
            report.min_received_per_subscriber = 0;
            continue;
        };
        let unique: u64 = subscriber.in_order.iter().sum();
        let gaps: u64 = (subscriber.highest.iter())
            .zip(&subscriber.in_order)
            .map(|(highest, in_order)| highest.saturating_sub(*in_order))
            .sum();
        let tail: u64 = (sent_by.iter())
            .zip(&subscriber.highest)
            .map(|(sent, highest)| sent.saturating_sub(*highest))
            .sum();
        report.received_total += subscriber.received;
        last_received_nanos = last_received_nanos.max(subscriber.last_received_nanos);
        report.out_of_order_or_duplicate += subscriber.out_of_order;
        report.foreign_messages += subscriber.foreign;
        report.min_received_per_subscriber = report.min_received_per_subscriber.min(unique);
        report.max_received_per_subscriber = report.max_received_per_subscriber.max(unique);
        if gaps + tail > 0 {
            report.subscribers_short += 1;
        }
        report.lost_total += gaps;
        report.undelivered_total += tail;
        if let Some(histogram) = subscriber.latency {
            // Both histograms have the same bounds, so adding cannot fail.
            let _ = latency.add(&histogram);
        }
    }
    if report.min_received_per_subscriber == u64::MAX {
        report.min_received_per_subscriber = 0;
    }
    report.latency = Latency::from_histogram(&latency);
    let delivering_secs = last_received_nanos.saturating_sub(clock.nanos_at(start)) as f64 / 1e9;
    if delivering_secs > 0.0 {
        report.delivered_per_sec_overall = report.received_total as f64 / delivering_secs;
    }
    report.bench_cpu_secs = own_cpu_secs().unwrap_or(0.0);
    report.connections_failed = failures.count();
    report.first_failure = failures.first();
    Ok(report)
}

struct Totals {
    sent: u64,
    acked: u64,
    received: u64,
}

/// Settling time between the last CONNACK and the memory reading.
const SETTLE: Duration = Duration::from_secs(2);

async fn run_idle(cli: &Cli, count: usize) -> anyhow::Result<IdleReport> {
    let began = Instant::now();
    let deadline = began + cli.deadline();
    let options = cli.connect_options();
    let prefix = client_prefix();
    let rss_before_kib = match cli.rss_pid {
        Some(pid) => Some(resident_kib(pid)?),
        None => None,
    };
    let failures = Arc::new(Failures::default());
    let dropped = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let _stop_all = stop.clone().drop_guard();
    let mut held = tokio::task::JoinSet::new();
    let mut attempts = futures::stream::iter(0..count)
        .map(|index| {
            let id = format!("{prefix}-i{index}");
            let options = &options;
            async move { (index, Session::open(options, &id, None).await) }
        })
        .buffer_unordered(cli.connect_concurrency);
    let mut open = 0;
    let mut deadline_reached = false;
    loop {
        let next = match tokio::time::timeout_at(deadline.into(), attempts.next()).await {
            Ok(next) => next,
            Err(_) => {
                deadline_reached = true;
                break;
            }
        };
        let Some((index, result)) = next else {
            break;
        };
        match result {
            Ok(session) => {
                open += 1;
                let stop = stop.clone();
                let dropped = Arc::clone(&dropped);
                let failures = Arc::clone(&failures);
                let keepalive = cli.keepalive;
                held.spawn(async move {
                    if let Err(error) = client::hold_idle(session, keepalive, stop).await {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        failures.record(&format!("connection {index}"), &error);
                    }
                });
            }
            Err(error) => failures.record(&format!("connection {index}"), &error),
        }
    }
    drop(attempts);
    let connect_secs = began.elapsed().as_secs_f64();
    let connected_at = Instant::now();
    tokio::time::sleep_until((connected_at + SETTLE).min(deadline).into()).await;
    let rss_after_kib = match cli.rss_pid {
        Some(pid) => Some(resident_kib(pid)?),
        None => None,
    };
    let hold_until = (connected_at + cli.duration.max(SETTLE)).min(deadline);
    tokio::time::sleep_until(hold_until.into()).await;
    deadline_reached |= Instant::now() >= deadline;
    let kib_per_connection = match (rss_before_kib, rss_after_kib) {
        (Some(before), Some(after)) if open > 0 => {
            Some((after as f64 - before as f64) / open as f64)
        }
        _ => None,
    };
    let report = IdleReport {
        broker: options.address.clone(),
        protocol: protocol_name(options.protocol).to_owned(),
        connections_requested: count,
        connections_open: open,
        connect_secs,
        connections_failed: failures.count(),
        first_failure: failures.first(),
        dropped_while_held: dropped.load(Ordering::Relaxed),
        rss_before_kib,
        rss_after_kib,
        kib_per_connection,
        deadline_reached,
    };
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while held.join_next().await.is_some() {}
    })
    .await;
    Ok(report)
}

/// CPU time (user and system) this process has used so far, in seconds.
fn own_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    // Linux reports these in clock ticks of 1/100 s on every architecture it runs on.
    Some((user + system) / 100.0)
}

/// `VmRSS` of a process, in KiB.
fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}
