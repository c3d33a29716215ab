//! The broker with Mosquitto's command-line clients (`mosquitto_pub`, `mosquitto_sub`):
//! an independent implementation of the client side. Where they are not installed the
//! tests are reported as ignored (with CI=true they fail instead).

#[path = "support/mod.rs"]
mod support;

use bytes::Bytes;
use fieldbridge_broker::config::AnonymousPolicy;
use fieldbridge_mqtt::codec::{Properties, Property, QoS};
use fieldbridge_testkit::{Need, Suite};
use tokio::process::{Child, Command};

use support::{
    config, payload, props, publish, publish_with, run, start, wait_until, Client, Process,
    DEADLINE,
};

/// Starts a Mosquitto client whose standard output is read by [`output_of`].
fn spawn(program: &str, args: &[&str]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("{program} runs: {error}"))
}

/// Waits for `child` to exit (within the deadline); returns (success, stdout lines).
async fn output_of(child: Child) -> (bool, Vec<String>) {
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("exits within the deadline")
        .expect("output");
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        output.status.success() || output.status.code() == Some(27),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), lines)
}

/// MQTT 5 message properties from mosquitto_pub (`-D publish ...`) reach an MQTT 5
/// mosquitto_sub unchanged, with its subscription identifier; an MQTT 3.1.1 mosquitto_sub
/// gets the same message without them.
async fn mosquitto_v5_properties_pass_through() {
    let broker = start(config()).await;
    let port = broker.local_addr().port().to_string();
    let format = "%t|%p|%C|%D|%E|%F|%R|%S|%P";
    let sub5 = spawn(
        "mosquitto_sub",
        &[
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-t",
            "m5/#",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "20",
            "-F",
            format,
            "-D",
            "subscribe",
            "subscription-identifier",
            "7",
        ],
    );
    let sub311 = spawn(
        "mosquitto_sub",
        &[
            "-p", &port, "-V", "mqttv311", "-t", "m5/#", "-q", "1", "-C", "1", "-W", "20", "-F",
            "%t|%p",
        ],
    );
    wait_until("both have subscribed", || broker.stats().subscriptions == 2).await;
    let (ok, _, stderr) = run(
        "mosquitto_pub",
        &[
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-t",
            "m5/x",
            "-m",
            "hello",
            "-q",
            "1",
            "-D",
            "publish",
            "user-property",
            "colour",
            "blue",
            "-D",
            "publish",
            "user-property",
            "colour",
            "green",
            "-D",
            "publish",
            "response-topic",
            "m5/reply",
            "-D",
            "publish",
            "correlation-data",
            "abc123",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "message-expiry-interval",
            "300",
            "-D",
            "publish",
            "payload-format-indicator",
            "1",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let (_, lines) = output_of(sub5).await;
    let line = lines.first().expect("one message").clone();
    let fields: Vec<&str> = line.split('|').collect();
    assert_eq!(
        fields[..8],
        [
            "m5/x",
            "hello",
            "text/plain",
            "abc123",
            fields[4],
            "1",
            "m5/reply",
            "7"
        ],
        "{line}"
    );
    let expiry: u32 = fields[4].parse().expect("an expiry");
    assert!((290..=300).contains(&expiry), "time left: {expiry}");
    assert!(
        fields[8].contains("colour:blue") && fields[8].contains("colour:green"),
        "user properties, repeated keys kept: {line}"
    );
    assert!(
        fields[8].find("blue") < fields[8].find("green"),
        "in order: {line}"
    );
    let (_, lines) = output_of(sub311).await;
    assert_eq!(lines, ["m5/x|hello"]);
}

/// mosquitto_rr sends a request with a response topic and correlation data; a responder
/// (our MQTT 5 client) answers on that topic with the same correlation data.
async fn mosquitto_rr_request_response() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let port = addr.port().to_string();
    let (mut responder, _) = Client::connect5(addr, "responder", true, Properties::new()).await;
    responder
        .subscribe(&[("rr/request", QoS::AtLeastOnce)])
        .await;
    let requester = spawn(
        "mosquitto_rr",
        &[
            "-p",
            &port,
            "-t",
            "rr/request",
            "-e",
            "rr/response/1",
            "-m",
            "ping?",
            "-q",
            "1",
            "-W",
            "20",
        ],
    );
    let request = responder.next_publish().await;
    assert_eq!(payload(&request), "ping?");
    let reply_to = request
        .properties
        .response_topic()
        .expect("a response topic")
        .to_string();
    assert_eq!(reply_to, "rr/response/1");
    let correlation = request
        .properties
        .correlation_data()
        .cloned()
        .unwrap_or_else(Bytes::new);
    let mut answer = props([]);
    if !correlation.is_empty() {
        answer.push(Property::CorrelationData(correlation));
    }
    responder
        .publish(publish_with(
            &reply_to,
            "pong!",
            QoS::AtLeastOnce,
            1,
            answer,
        ))
        .await;
    let (ok, lines) = output_of(requester).await;
    assert!(ok);
    assert_eq!(lines, ["pong!"]);
}

/// A shared subscription with an MQTT 5 and an MQTT 3.1.1 mosquitto_sub as members: each
/// message goes to one of them.
async fn mosquitto_shared_subscription_members_of_both_versions() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let port = addr.port().to_string();
    let member = |version| {
        spawn(
            "mosquitto_sub",
            &[
                "-p",
                &port,
                "-V",
                version,
                "-t",
                "$share/workers/jobs/#",
                "-q",
                "1",
                "-C",
                "2",
                "-W",
                "20",
            ],
        )
    };
    let five = member("mqttv5");
    let old = member("mqttv311");
    wait_until("both members have subscribed", || {
        broker.stats().subscriptions == 2
    })
    .await;
    let (mut publisher, _) = Client::connect5(addr, "jobs", true, Properties::new()).await;
    for n in 1..=4u16 {
        publisher
            .publish(publish("jobs/x", format!("job-{n}"), QoS::AtLeastOnce, n))
            .await;
    }
    let (_, five) = output_of(five).await;
    let (_, old) = output_of(old).await;
    assert_eq!(
        (five.len(), old.len()),
        (2, 2),
        "taking turns: {five:?} {old:?}"
    );
    let mut all: Vec<String> = five.into_iter().chain(old).collect();
    all.sort();
    assert_eq!(all, ["job-1", "job-2", "job-3", "job-4"]);
}

/// mosquitto_sub's session expiry (`-c -x`): messages published while it is away are
/// kept for it within the expiry.
async fn mosquitto_v5_session_expiry() {
    let broker = start(config()).await;
    let port = broker.local_addr().port().to_string();
    let session = [
        "-p",
        &port,
        "-V",
        "mqttv5",
        "-i",
        "mosq-session",
        "-c",
        "-x",
        "60",
        "-t",
        "away/#",
        "-q",
        "1",
    ];
    let (ok, _, stderr) = run("mosquitto_sub", &[&session[..], &["-E"]].concat()).await;
    assert!(ok, "{stderr}");
    wait_until("mosquitto_sub is gone, its session kept", || {
        broker.stats().clients_connected == 0 && broker.stats().clients_total == 1
    })
    .await;
    let (ok, _, stderr) = run(
        "mosquitto_pub",
        &[
            "-p", &port, "-V", "mqttv5", "-t", "away/1", "-m", "kept", "-q", "1",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = run(
        "mosquitto_sub",
        &[&session[..], &["-C", "1", "-W", "20"]].concat(),
    )
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "kept");
}

/// A retained message whose expiry has passed is not sent to a new mosquitto_sub.
async fn mosquitto_v5_retained_message_expiry() {
    let broker = start(config()).await;
    let port = broker.local_addr().port().to_string();
    for (topic, expiry) in [("exp/short", "1"), ("exp/long", "600")] {
        let (ok, _, stderr) = run(
            "mosquitto_pub",
            &[
                "-p",
                &port,
                "-V",
                "mqttv5",
                "-t",
                topic,
                "-m",
                topic,
                "-r",
                "-q",
                "1",
                "-D",
                "publish",
                "message-expiry-interval",
                expiry,
            ],
        )
        .await;
        assert!(ok, "{stderr}");
    }
    // Sets up the case: the short expiry must pass.
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let sub = spawn(
        "mosquitto_sub",
        &[
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-t",
            "exp/#",
            "--retained-only",
            "-W",
            "3",
            "-F",
            "%t %E",
        ],
    );
    let (_, lines) = output_of(sub).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let (topic, left) = lines[0].split_once(' ').expect("topic and expiry");
    assert_eq!(topic, "exp/long");
    let left: u32 = left.parse().expect("seconds left");
    assert!((500..=598).contains(&left), "{left}");
}

async fn mosquitto_clients_publish_and_subscribe() {
    let process = Process::spawn(&["--listen", "127.0.0.1:0"]).await;
    let port = process.addr.port().to_string();
    for qos in ["0", "1", "2"] {
        let topic = format!("mosq/{qos}");
        let (ok, _, stderr) = run(
            "mosquitto_pub",
            &["-p", &port, "-t", &topic, "-m", "retained", "-r", "-q", qos],
        )
        .await;
        assert!(ok, "{stderr}");
    }
    let (ok, stdout, stderr) = run(
        "mosquitto_sub",
        &[
            "-p", &port, "-t", "mosq/#", "-q", "2", "-C", "3", "-v", "-W", "15",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let mut lines: Vec<_> = stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        ["mosq/0 retained", "mosq/1 retained", "mosq/2 retained"]
    );
}

/// Live messages to mosquitto_sub, published once the broker shows its subscription.
async fn mosquitto_sub_receives_live_messages() {
    let broker = start(config()).await;
    let port = broker.local_addr().port().to_string();
    let sub = Command::new("mosquitto_sub")
        .args([
            "-p", &port, "-t", "live/#", "-q", "2", "-C", "2", "-W", "15",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub runs");
    wait_until("mosquitto_sub has subscribed", || {
        broker.stats().subscriptions == 1
    })
    .await;
    let (mut publisher, _) = Client::connect(broker.local_addr(), "pub", true).await;
    publisher
        .publish(publish("live/a", "first", QoS::ExactlyOnce, 1))
        .await;
    publisher
        .publish(publish("live/b", "second", QoS::AtLeastOnce, 2))
        .await;
    let output = tokio::time::timeout(DEADLINE, sub.wait_with_output())
        .await
        .expect("exits")
        .expect("output");
    assert!(output.status.success());
    // mosquitto_sub prints a QoS 2 message once released, so the order of lines may differ.
    let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(lines, ["first", "second"]);
}

/// The `passwd` subcommand writes a file the broker (and Mosquitto's clients) can use.
async fn passwd_command_and_mosquitto_clients_with_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    let file_arg = file.to_str().expect("utf-8 path");
    let broker_bin = env!("CARGO_BIN_EXE_fieldbridge-broker");
    let (ok, _, stderr) = run(broker_bin, &["passwd", "-b", file_arg, "device", "s3cret"]).await;
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = run(broker_bin, &["passwd", "-b", file_arg, "other", "x"]).await;
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = run(broker_bin, &["passwd", "-D", file_arg, "other"]).await;
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = run(broker_bin, &["passwd", "-D", file_arg, "other"]).await;
    assert!(!ok && stderr.contains("no user"), "{stderr}");

    let mut cfg = config();
    cfg.auth.password_file = Some(file);
    cfg.allow_anonymous = AnonymousPolicy::Never;
    let broker = start(cfg).await;
    let port = broker.local_addr().port().to_string();
    let (ok, _, stderr) = run(
        "mosquitto_pub",
        &[
            "-p", &port, "-u", "device", "-P", "s3cret", "-t", "t", "-m", "m", "-q", "1",
        ],
    )
    .await;
    assert!(ok, "right password: {stderr}");
    let (ok, _, stderr) = run(
        "mosquitto_pub",
        &[
            "-p", &port, "-u", "device", "-P", "wrong", "-t", "t", "-m", "m",
        ],
    )
    .await;
    assert!(!ok, "wrong password refused: {stderr}");
    let (ok, _, _) = run(
        "mosquitto_pub",
        &["-p", &port, "-u", "other", "-P", "x", "-t", "t", "-m", "m"],
    )
    .await;
    assert!(!ok, "deleted user refused");
}

fn main() -> std::process::ExitCode {
    let mut suite = Suite::new();
    let needs = [Need::mosquitto_clients()];
    suite.async_test(
        "mosquitto_clients_publish_and_subscribe",
        &needs,
        mosquitto_clients_publish_and_subscribe,
    );
    suite.async_test(
        "mosquitto_sub_receives_live_messages",
        &needs,
        mosquitto_sub_receives_live_messages,
    );
    suite.async_test(
        "passwd_command_and_mosquitto_clients_with_credentials",
        &needs,
        passwd_command_and_mosquitto_clients_with_credentials,
    );
    suite.async_test(
        "mosquitto_v5_properties_pass_through",
        &needs,
        mosquitto_v5_properties_pass_through,
    );
    suite.async_test(
        "mosquitto_rr_request_response",
        &[Need::program(
            "mosquitto_rr",
            "apt-get install mosquitto-clients",
        )],
        mosquitto_rr_request_response,
    );
    suite.async_test(
        "mosquitto_shared_subscription_members_of_both_versions",
        &needs,
        mosquitto_shared_subscription_members_of_both_versions,
    );
    suite.async_test(
        "mosquitto_v5_session_expiry",
        &needs,
        mosquitto_v5_session_expiry,
    );
    suite.async_test(
        "mosquitto_v5_retained_message_expiry",
        &needs,
        mosquitto_v5_retained_message_expiry,
    );
    suite.run()
}
