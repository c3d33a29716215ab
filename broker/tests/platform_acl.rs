//! Platform mode against the real broker: authentication by client id form, the ACL
//! matrix between devices and applications, every refusal path, topic rewriting, status
//! messages, scalable applications and quickstart.

mod support;

use fieldbridge_broker::{Config, RunningBroker};
use fieldbridge_mqtt::codec::{QoS, ReasonCode, SubscribeReturnCode};
use support::{granted, login_packet, text, will, Client, Silence, DEADLINE};

const ORG: &str = "acme";

struct Platform {
    broker: RunningBroker,
    b1: String,
    b2: String,
    dash: (String, String),
    other_app: (String, String),
    _dir: tempfile::TempDir,
}

/// A platform broker with devices boiler/b1 and boiler/b2 and applications dash and ops.
async fn platform() -> Platform {
    platform_with(|_| {}).await
}

/// [`platform`], with its configuration adjusted by `adjust`.
async fn platform_with(adjust: impl FnOnce(&mut Config)) -> Platform {
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = dir.path().join("registry.db");
    let (tokens, keys) = support::register(
        &registry,
        ORG,
        &[("boiler", "b1"), ("boiler", "b2")],
        &["dash", "ops"],
    )
    .await;
    let mut config = support::platform_config(ORG, Some(&registry));
    adjust(&mut config);
    let broker = support::start(config).await;
    Platform {
        broker,
        b1: tokens[0].clone(),
        b2: tokens[1].clone(),
        dash: keys[0].clone(),
        other_app: keys[1].clone(),
        _dir: dir,
    }
}

impl Platform {
    async fn device(&self, id: &str) -> Client {
        let token = if id == "b1" { &self.b1 } else { &self.b2 };
        Client::log_in(
            self.broker.local_addr(),
            &format!("d:{ORG}:boiler:{id}"),
            Some("use-token-auth"),
            Some(token),
        )
        .await
    }

    async fn app(&self, client_id: &str) -> Client {
        Client::log_in(
            self.broker.local_addr(),
            client_id,
            Some(&self.dash.0),
            Some(&self.dash.1),
        )
        .await
    }
}

#[tokio::test]
async fn devices_are_isolated_and_applications_see_the_org() {
    let p = platform().await;
    let mut b1 = p.device("b1").await;
    let mut b2 = p.device("b2").await;
    let mut app = p.app("a:acme:dash").await;

    assert_eq!(
        b1.subscribe(&[("iot-2/cmd/+/fmt/json", QoS::AtLeastOnce)])
            .await,
        [granted(QoS::AtLeastOnce)]
    );
    assert_eq!(
        b2.subscribe(&[
            ("iot-2/cmd/+/fmt/+", QoS::AtLeastOnce),
            ("iotdm-1/#", QoS::AtLeastOnce)
        ])
        .await,
        [granted(QoS::AtLeastOnce), granted(QoS::AtLeastOnce)]
    );
    // A device cannot read another device's traffic, nor events at all.
    assert_eq!(
        b2.subscribe(&[
            ("iot-2/type/boiler/id/b1/evt/+/fmt/+", QoS::AtMostOnce),
            ("iot-2/type/boiler/id/b1/cmd/+/fmt/+", QoS::AtMostOnce),
            ("iot-2/evt/+/fmt/+", QoS::AtMostOnce),
            ("iot-2/cmd/#", QoS::AtMostOnce),
            ("#", QoS::AtMostOnce),
            ("iotdevice-1/#", QoS::AtMostOnce),
        ])
        .await,
        vec![SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError); 6]
    );
    assert_eq!(
        app.subscribe(&[
            ("iot-2/type/+/id/+/evt/+/fmt/+", QoS::AtLeastOnce),
            ("iotdevice-1/type/+/id/+/#", QoS::AtMostOnce),
        ])
        .await,
        [granted(QoS::AtLeastOnce), granted(QoS::AtMostOnce)]
    );
    assert_eq!(
        app.subscribe(&[("$SYS/#", QoS::AtMostOnce), ("other/#", QoS::AtMostOnce)])
            .await,
        vec![SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError); 2]
    );

    // Events of both devices reach the application on the full topic.
    b1.publish_to(
        "iot-2/evt/status/fmt/json",
        b"{\"from\":\"b1\"}",
        QoS::AtLeastOnce,
        false,
    )
    .await;
    b2.publish_to(
        "iot-2/evt/status/fmt/json",
        b"{\"from\":\"b2\"}",
        QoS::AtLeastOnce,
        false,
    )
    .await;
    let first = app.next_publish().await;
    let second = app.next_publish().await;
    assert_eq!(&*first.topic, "iot-2/type/boiler/id/b1/evt/status/fmt/json");
    assert_eq!(text(&first), "{\"from\":\"b1\"}");
    assert_eq!(
        &*second.topic,
        "iot-2/type/boiler/id/b2/evt/status/fmt/json"
    );
    b2.publish_to(
        "iotdevice-1/response",
        b"{\"rc\":200}",
        QoS::AtMostOnce,
        false,
    )
    .await;
    assert_eq!(
        &*app.next_publish().await.topic,
        "iotdevice-1/type/boiler/id/b2/response"
    );

    // The application commands each device; each sees only its own, in its short view.
    app.publish_to(
        "iot-2/type/boiler/id/b1/cmd/setpoint/fmt/json",
        b"{\"d\":{\"value\":1}}",
        QoS::AtLeastOnce,
        false,
    )
    .await;
    app.publish_to(
        "iot-2/type/boiler/id/b2/cmd/setpoint/fmt/json",
        b"{\"d\":{\"value\":2}}",
        QoS::AtLeastOnce,
        false,
    )
    .await;
    let command = b1.next_publish().await;
    assert_eq!(&*command.topic, "iot-2/cmd/setpoint/fmt/json");
    assert_eq!(text(&command), "{\"d\":{\"value\":1}}");
    let command = b2.next_publish().await;
    assert_eq!(&*command.topic, "iot-2/cmd/setpoint/fmt/json");
    assert_eq!(
        text(&command),
        "{\"d\":{\"value\":2}}",
        "b2 got b1's command"
    );
    // Device management requests are rewritten too.
    app.publish_to(
        "iotdm-1/type/boiler/id/b2/mgmt/initiate/device/reboot",
        b"{}",
        QoS::AtMostOnce,
        false,
    )
    .await;
    assert_eq!(
        &*b2.next_publish().await.topic,
        "iotdm-1/mgmt/initiate/device/reboot"
    );

    // An application publishes events on behalf of a device.
    app.publish_to(
        "iot-2/type/boiler/id/b1/evt/migrated/fmt/json",
        b"{}",
        QoS::AtMostOnce,
        false,
    )
    .await;
    assert_eq!(
        &*app.next_publish().await.topic,
        "iot-2/type/boiler/id/b1/evt/migrated/fmt/json"
    );

    // b1 got nothing else: the next thing it sees is the next command to it.
    app.publish_to(
        "iot-2/type/boiler/id/b1/cmd/next/fmt/json",
        b"{}",
        QoS::AtLeastOnce,
        false,
    )
    .await;
    assert_eq!(&*b1.next_publish().await.topic, "iot-2/cmd/next/fmt/json");
}

#[tokio::test]
async fn a_device_publishing_as_another_device_is_disconnected() {
    let p = platform().await;
    let mut app = p.app("a:acme:dash").await;
    app.subscribe(&[("iot-2/type/+/id/+/evt/+/fmt/+", QoS::AtMostOnce)])
        .await;
    for forbidden in [
        "iot-2/type/boiler/id/b2/evt/status/fmt/json",
        "iot-2/cmd/setpoint/fmt/json",
        "iot-2/type/boiler/id/b1/mon",
        "sensors/temperature",
    ] {
        let mut b1 = p.device("b1").await;
        b1.publish_to(forbidden, b"{}", QoS::AtMostOnce, false)
            .await;
        b1.expect_closed().await;
    }
    // Nothing of that reached the application: its next event is a legitimate one.
    let mut b2 = p.device("b2").await;
    b2.publish_to("iot-2/evt/ok/fmt/json", b"{}", QoS::AtMostOnce, false)
        .await;
    assert_eq!(
        &*app.next_publish().await.topic,
        "iot-2/type/boiler/id/b2/evt/ok/fmt/json"
    );

    // An application may not publish status or device responses.
    let mut rogue = p.app("a:acme:dash").await;
    rogue
        .publish_to("iot-2/type/boiler/id/b1/mon", b"{}", QoS::AtMostOnce, false)
        .await;
    rogue.expect_closed().await;
}

#[tokio::test]
async fn every_authentication_refusal() {
    // Many failures from one address: no backoff here (see failed_logins_back_off).
    let p = platform_with(|config| config.auth.login_backoff.tracked = 0).await;
    let addr = p.broker.local_addr();
    let device = |id: &str, user: Option<&str>, token: Option<&str>| {
        login_packet(&format!("d:{ORG}:boiler:{id}"), user, token)
    };
    let cases = [
        (
            "bad token",
            device("b1", Some("use-token-auth"), Some("not-the-token")),
            ReasonCode::BadUserNameOrPassword,
        ),
        (
            "another device's token",
            device("b1", Some("use-token-auth"), Some(&p.b2)),
            ReasonCode::BadUserNameOrPassword,
        ),
        (
            "no token",
            device("b1", None, None),
            ReasonCode::BadUserNameOrPassword,
        ),
        (
            "wrong user name",
            device("b1", Some("b1"), Some(&p.b1)),
            ReasonCode::BadUserNameOrPassword,
        ),
        (
            "unknown device, answered like a bad token",
            device("b3", Some("use-token-auth"), Some(&p.b1)),
            ReasonCode::BadUserNameOrPassword,
        ),
        (
            "wrong org",
            login_packet("d:other:boiler:b1", Some("use-token-auth"), Some(&p.b1)),
            ReasonCode::NotAuthorized,
        ),
        (
            "malformed id",
            login_packet("boiler-b1", Some("use-token-auth"), Some(&p.b1)),
            ReasonCode::NotAuthorized,
        ),
        (
            "malformed device id",
            login_packet("d:acme:boiler:b/1", Some("use-token-auth"), Some(&p.b1)),
            ReasonCode::NotAuthorized,
        ),
        (
            "application with a bad token",
            login_packet("a:acme:dash", Some(&p.dash.0), Some("wrong")),
            ReasonCode::BadUserNameOrPassword,
        ),
        (
            "application with an unknown key",
            login_packet("a:acme:dash", Some("a-acme-nosuchkey"), Some(&p.dash.1)),
            ReasonCode::BadUserNameOrPassword,
        ),
        (
            "application with another application's key",
            login_packet("a:acme:dash", Some(&p.other_app.0), Some(&p.other_app.1)),
            ReasonCode::BadUserNameOrPassword,
        ),
        (
            "application of another org",
            login_packet("a:other:dash", Some(&p.dash.0), Some(&p.dash.1)),
            ReasonCode::NotAuthorized,
        ),
        (
            "anonymous plain client",
            login_packet("plain", None, None),
            ReasonCode::NotAuthorized,
        ),
    ];
    for (what, connect, expected) in cases {
        assert_eq!(Client::attempt(addr, connect).await, expected, "{what}");
    }
    // Will topics are held to the same rules.
    let mut connect = device("b1", Some("use-token-auth"), Some(&p.b1));
    connect.will = Some(will(
        "iot-2/type/boiler/id/b2/evt/x/fmt/json",
        "{}",
        QoS::AtMostOnce,
        false,
    ));
    assert_eq!(
        Client::attempt(addr, connect).await,
        ReasonCode::NotAuthorized,
        "will as another device"
    );
    // The right credentials still work after all that (and again, from the cache).
    for _ in 0..2 {
        p.device("b1").await.disconnect().await;
    }
    Client::log_in(
        addr,
        "a:acme:ops",
        Some(&p.other_app.0),
        Some(&p.other_app.1),
    )
    .await
    .disconnect()
    .await;
}

fn median(mut samples: Vec<std::time::Duration>) -> std::time::Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// An unknown device costs what a wrong token costs, and gets the same answer.
#[tokio::test]
async fn unknown_devices_take_as_long_as_bad_tokens() {
    let p = platform_with(|config| config.auth.login_backoff.tracked = 0).await;
    let addr = p.broker.local_addr();
    let attempt = |id: &'static str| async move {
        let client = Client::tcp(addr).await;
        let started = std::time::Instant::now();
        let (_, connack) = client
            .handshake(login_packet(
                &format!("d:{ORG}:boiler:{id}"),
                Some("use-token-auth"),
                Some("guess"),
            ))
            .await;
        assert_eq!(connack.code, ReasonCode::BadUserNameOrPassword, "{id}");
        started.elapsed()
    };
    attempt("nosuch").await;
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for round in 0..15 {
        if round % 2 == 0 {
            known.push(attempt("b1").await);
            unknown.push(attempt("nosuch").await);
        } else {
            unknown.push(attempt("nosuch").await);
            known.push(attempt("b1").await);
        }
    }
    let (known, unknown) = (median(known), median(unknown));
    eprintln!("failed token checks, median: known device {known:?}, unknown device {unknown:?}");
    assert!(
        unknown * 2 >= known && known * 2 >= unknown,
        "known device {known:?}, unknown device {unknown:?}"
    );
}

/// Token guessing backs off like password guessing: by address and by client id.
#[tokio::test]
async fn failed_logins_back_off() {
    let p = platform_with(|config| {
        let backoff = &mut config.auth.login_backoff;
        backoff.after_failures = 2;
        backoff.delay = std::time::Duration::from_secs(60);
        backoff.max_delay = std::time::Duration::from_secs(60);
    })
    .await;
    let addr = p.broker.local_addr();
    let from = |last: u8| std::net::IpAddr::from([127, 0, 0, last]);
    let b1 = format!("d:{ORG}:boiler:b1");
    let b2 = format!("d:{ORG}:boiler:b2");
    let code = |last: u8, client_id: &str, token: &str| {
        let connect = login_packet(client_id, Some("use-token-auth"), Some(token));
        async move {
            Client::tcp_from(from(last), addr)
                .await
                .handshake(connect)
                .await
                .1
                .code
        }
    };
    use ReasonCode::{BadUserNameOrPassword, Success as Accepted};
    assert_eq!(code(2, &b1, "guess-1").await, BadUserNameOrPassword);
    assert_eq!(code(2, &b1, "guess-2").await, BadUserNameOrPassword);
    assert_eq!(
        code(2, &b2, &p.b2).await,
        BadUserNameOrPassword,
        "the guessing address is held back"
    );
    assert_eq!(
        code(3, &b1, &p.b1).await,
        BadUserNameOrPassword,
        "so is the device guessed at"
    );
    assert_eq!(code(3, &b2, &p.b2).await, Accepted, "not the others");
}

#[tokio::test]
async fn events_are_never_retained_and_payloads_are_limited() {
    let p = platform().await;
    let mut b1 = p.device("b1").await;
    b1.publish_to(
        "iot-2/evt/status/fmt/json",
        b"{\"n\":1}",
        QoS::AtLeastOnce,
        true,
    )
    .await;
    let mut app = p.app("a:acme:dash").await;
    app.publish_to(
        "iot-2/type/boiler/id/b2/evt/status/fmt/json",
        b"{\"n\":2}",
        QoS::AtLeastOnce,
        true,
    )
    .await;
    app.subscribe(&[("iot-2/type/+/id/+/evt/+/fmt/+", QoS::AtMostOnce)])
        .await;
    // No retained event arrives on subscribing: the first event is a live one.
    b1.publish_to("iot-2/evt/live/fmt/json", b"{}", QoS::AtLeastOnce, false)
        .await;
    let first = app.next_publish().await;
    assert_eq!(&*first.topic, "iot-2/type/boiler/id/b1/evt/live/fmt/json");
    assert!(!first.retain);

    // The largest payload passes; one byte more ends the connection.
    let largest = vec![b'x'; 131_072];
    b1.publish_to("iot-2/evt/big/fmt/bin", &largest, QoS::AtLeastOnce, false)
        .await;
    assert_eq!(app.next_publish().await.payload.len(), 131_072);
    let oversized = vec![b'x'; 131_073];
    b1.send(fieldbridge_mqtt::codec::Packet::Publish(support::publish(
        "iot-2/evt/big/fmt/bin",
        &oversized,
        QoS::AtMostOnce,
        0,
    )))
    .await;
    b1.expect_closed().await;
}

#[tokio::test]
async fn status_messages_on_connect_and_disconnect() {
    let p = platform().await;
    let mut app = p.app("a:acme:dash").await;
    assert_eq!(
        app.subscribe(&[
            ("iot-2/type/+/id/+/mon", QoS::AtMostOnce),
            ("iot-2/app/+/mon", QoS::AtMostOnce)
        ])
        .await
        .len(),
        2
    );
    // The application's own connect status is retained and arrives on subscribing.
    let own = app.next_publish().await;
    assert_eq!(&*own.topic, "iot-2/app/dash/mon");
    let own: serde_json::Value = serde_json::from_slice(&own.payload).expect("JSON");
    assert_eq!(own["Action"], "Connect");
    assert_eq!(own["ClientID"], "a:acme:dash");

    let mut b1 = p.device("b1").await;
    let connected = app.next_publish().await;
    assert_eq!(&*connected.topic, "iot-2/type/boiler/id/b1/mon");
    let status: serde_json::Value = serde_json::from_slice(&connected.payload).expect("JSON");
    assert_eq!(status["Action"], "Connect");
    assert_eq!(status["ClientAddr"], "127.0.0.1");
    assert_eq!(status["Protocol"], "mqtt-tcp");
    assert_eq!(status["User"], "use-token-auth");
    assert!(status["Time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(status["ConnectTime"].as_str().is_some());
    let text = connected.payload.clone();
    assert!(
        !String::from_utf8_lossy(&text).contains(&p.b1),
        "the token is not in the status"
    );

    b1.publish_to(
        "iot-2/evt/status/fmt/json",
        b"{\"a\":1}",
        QoS::AtLeastOnce,
        false,
    )
    .await;
    b1.disconnect().await;
    let gone = app.next_publish().await;
    assert_eq!(&*gone.topic, "iot-2/type/boiler/id/b1/mon");
    let status: serde_json::Value = serde_json::from_slice(&gone.payload).expect("JSON");
    assert_eq!(status["Action"], "Disconnect");
    assert_eq!(status["Reason"], "DISCONNECT");
    assert_eq!(status["ReadMsg"], 1);
    assert!(
        status["ReadBytes"].as_u64().is_some_and(|b| b > 20),
        "{status}"
    );
    assert!(
        status["WriteBytes"].as_u64().is_some_and(|b| b >= 4),
        "{status}"
    );

    // A later subscriber finds the last status retained.
    let mut late = Client::log_in(
        p.broker.local_addr(),
        "a:acme:ops",
        Some(&p.other_app.0),
        Some(&p.other_app.1),
    )
    .await;
    late.subscribe(&[("iot-2/type/boiler/id/b1/mon", QoS::AtMostOnce)])
        .await;
    let retained = late.next_publish().await;
    assert!(retained.retain);
    let status: serde_json::Value = serde_json::from_slice(&retained.payload).expect("JSON");
    assert_eq!(status["Action"], "Disconnect");
}

#[tokio::test]
async fn scalable_applications_share_the_load_round_robin() {
    let p = platform().await;
    let mut first = p.app("A:acme:dash").await;
    let mut second = p.app("A:acme:dash").await;
    for worker in [&mut first, &mut second] {
        assert_eq!(
            worker
                .subscribe(&[("iot-2/type/+/id/+/evt/+/fmt/+", QoS::AtLeastOnce)])
                .await,
            [granted(QoS::AtLeastOnce)]
        );
    }
    let mut b1 = p.device("b1").await;
    for n in 0..10 {
        b1.publish_to(
            "iot-2/evt/n/fmt/json",
            format!("{n}").as_bytes(),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    }
    let mut received = Vec::new();
    for _ in 0..5 {
        received.push(text(&first.next_publish().await).to_owned());
        received.push(text(&second.next_publish().await).to_owned());
    }
    received.sort_by_key(|n| n.parse::<u32>().unwrap_or(u32::MAX));
    let expected: Vec<String> = (0..10).map(|n| n.to_string()).collect();
    assert_eq!(
        received, expected,
        "each event delivered once, to one worker"
    );
    // Both workers stayed connected: neither took the other over.
    first.ping().await;
    second.ping().await;

    // When one unsubscribes, the other gets everything.
    second
        .send(fieldbridge_mqtt::codec::Packet::Unsubscribe(
            fieldbridge_mqtt::codec::Unsubscribe {
                pkid: 9,
                filters: vec!["iot-2/type/+/id/+/evt/+/fmt/+".into()],
                properties: Default::default(),
            },
        ))
        .await;
    assert!(matches!(
        second.recv().await,
        fieldbridge_mqtt::codec::Packet::UnsubAck(_)
    ));
    for n in 10..14 {
        b1.publish_to(
            "iot-2/evt/n/fmt/json",
            format!("{n}").as_bytes(),
            QoS::AtLeastOnce,
            false,
        )
        .await;
        assert_eq!(text(&first.next_publish().await), n.to_string());
    }

    // Plain applications with one client id still take each other over.
    let mut plain = p.app("a:acme:dash").await;
    let _again = p.app("a:acme:dash").await;
    plain.expect_closed().await;
}

#[tokio::test]
async fn quickstart_needs_no_registration_and_limits_devices() {
    let broker = support::start(support::platform_config("quickstart", None)).await;
    let addr = broker.local_addr();
    let mut app = Client::log_in(addr, "a:quickstart:viewer", None, None).await;
    assert_eq!(
        app.subscribe(&[
            ("iot-2/type/sensor/id/+/evt/+/fmt/+", QoS::AtLeastOnce),
            ("iot-2/type/+/id/+/evt/+/fmt/+", QoS::AtMostOnce),
            ("iot-2/type/sensor/id/s1/cmd/+/fmt/+", QoS::AtMostOnce),
        ])
        .await,
        [
            granted(QoS::AtMostOnce),
            SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError),
            SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError)
        ]
    );
    let mut device = Client::log_in(addr, "d:quickstart:sensor:s1", None, None).await;
    assert_eq!(
        device
            .subscribe(&[
                ("iot-2/cmd/+/fmt/+", QoS::AtMostOnce),
                ("iotdm-1/#", QoS::AtMostOnce)
            ])
            .await,
        vec![SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError); 2]
    );
    // A burst: the first event passes, the others within the second are dropped.
    let burst = (0..5)
        .map(|n| {
            fieldbridge_mqtt::codec::Packet::Publish(support::publish(
                "iot-2/evt/burst/fmt/json",
                format!("{n}").as_bytes(),
                QoS::AtMostOnce,
                0,
            ))
        })
        .collect();
    device.send_all(burst).await;
    assert_eq!(text(&app.next_publish().await), "0");
    // Once a second has passed an event goes through again; nothing of the burst did.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no later event passed"
        );
        device
            .publish_to("iot-2/evt/later/fmt/json", b"later", QoS::AtMostOnce, false)
            .await;
        match app.try_recv(std::time::Duration::from_millis(200)).await {
            Ok(fieldbridge_mqtt::codec::Packet::Publish(publish)) => {
                assert_eq!(text(&publish), "later", "a burst event was not dropped");
                break;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(Silence::TimedOut) => {}
            Err(Silence::Closed) => panic!("the application was disconnected"),
        }
    }
    // QoS 1 and commands are not available.
    device
        .publish_to("iot-2/evt/x/fmt/json", b"{}", QoS::AtMostOnce, false)
        .await;
    device
        .send(fieldbridge_mqtt::codec::Packet::Publish(support::publish(
            "iot-2/evt/x/fmt/json",
            b"{}",
            QoS::AtLeastOnce,
            1,
        )))
        .await;
    device.expect_closed().await;
    app.publish_to(
        "iot-2/type/sensor/id/s1/cmd/x/fmt/json",
        b"{}",
        QoS::AtMostOnce,
        false,
    )
    .await;
    app.expect_closed().await;
    // Another org is not served.
    assert_eq!(
        Client::attempt(addr, login_packet("d:acme:sensor:s1", None, None)).await,
        ReasonCode::NotAuthorized
    );
}

#[tokio::test]
async fn anonymous_quickstart_only_on_loopback_listeners_by_default() {
    let mut config = support::platform_config("quickstart", None);
    config
        .listeners
        .push(fieldbridge_broker::config::ListenerConfig::mqtt(
            "0.0.0.0:0".parse().expect("address"),
        ));
    let broker = support::start(config).await;
    let loopback = broker.local_addrs()[0];
    let open = std::net::SocketAddr::from(([127, 0, 0, 1], broker.local_addrs()[1].port()));
    let quick = || login_packet("d:quickstart:sensor:s1", None, None);
    assert_eq!(
        Client::attempt(loopback, quick()).await,
        ReasonCode::Success
    );
    assert_eq!(
        Client::attempt(open, quick()).await,
        ReasonCode::NotAuthorized,
        "anonymous on a listener not bound to loopback"
    );

    // Registered clients authenticate, so they are welcome on any listener.
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = dir.path().join("registry.db");
    let (tokens, _) = support::register(&registry, ORG, &[("boiler", "b9")], &[]).await;
    let mut config = support::platform_config(ORG, Some(&registry));
    config.listeners = vec![fieldbridge_broker::config::ListenerConfig::mqtt(
        "0.0.0.0:0".parse().expect("address"),
    )];
    let broker = support::start(config).await;
    let open = std::net::SocketAddr::from(([127, 0, 0, 1], broker.local_addr().port()));
    Client::log_in(
        open,
        "d:acme:boiler:b9",
        Some("use-token-auth"),
        Some(&tokens[0]),
    )
    .await
    .disconnect()
    .await;
}

#[tokio::test]
async fn wills_and_offline_commands_in_the_device_view() {
    let p = platform().await;
    let addr = p.broker.local_addr();
    let mut app = p.app("a:acme:dash").await;
    app.subscribe(&[("iot-2/type/+/id/+/evt/+/fmt/+", QoS::AtMostOnce)])
        .await;

    // A will on the device's own event topic is rewritten, and not retained.
    let mut connect = login_packet("d:acme:boiler:b1", Some("use-token-auth"), Some(&p.b1));
    connect.will = Some(will(
        "iot-2/evt/gone/fmt/json",
        "{\"gone\":true}",
        QoS::AtMostOnce,
        true,
    ));
    let (device, connack) = Client::connect_with(addr, connect).await;
    assert_eq!(connack.code, ReasonCode::Success);
    drop(device);
    let gone = app.next_publish().await;
    assert_eq!(&*gone.topic, "iot-2/type/boiler/id/b1/evt/gone/fmt/json");
    assert_eq!(text(&gone), "{\"gone\":true}");
    let mut late = Client::log_in(
        addr,
        "a:acme:ops",
        Some(&p.other_app.0),
        Some(&p.other_app.1),
    )
    .await;
    late.subscribe(&[("iot-2/type/+/id/+/evt/+/fmt/+", QoS::AtMostOnce)])
        .await;
    late.ping().await;
    assert_eq!(
        late.try_recv(std::time::Duration::ZERO).await,
        Err(Silence::TimedOut),
        "the will was retained"
    );

    // Commands queued for a persistent device session arrive in its view when it returns.
    let mut durable = login_packet("d:acme:boiler:b2", Some("use-token-auth"), Some(&p.b2));
    durable.clean_session = false;
    let (mut device, connack) = Client::connect_with(addr, durable.clone()).await;
    assert_eq!(connack.code, ReasonCode::Success);
    device
        .subscribe(&[("iot-2/cmd/+/fmt/json", QoS::AtLeastOnce)])
        .await;
    device.disconnect().await;
    app.publish_to(
        "iot-2/type/boiler/id/b2/cmd/setpoint/fmt/json",
        b"{\"d\":{\"value\":7}}",
        QoS::AtLeastOnce,
        false,
    )
    .await;
    let (mut device, connack) = Client::connect_with(addr, durable).await;
    assert_eq!(connack.code, ReasonCode::Success);
    let command = device.next_publish().await;
    assert_eq!(&*command.topic, "iot-2/cmd/setpoint/fmt/json");
    assert_eq!(text(&command), "{\"d\":{\"value\":7}}");
    // Unsubscribing in the device view removes the rewritten subscription.
    device
        .send(fieldbridge_mqtt::codec::Packet::Unsubscribe(
            fieldbridge_mqtt::codec::Unsubscribe {
                pkid: 3,
                filters: vec!["iot-2/cmd/+/fmt/json".into()],
                properties: Default::default(),
            },
        ))
        .await;
    assert!(matches!(
        device.recv().await,
        fieldbridge_mqtt::codec::Packet::UnsubAck(_)
    ));
    app.publish_to(
        "iot-2/type/boiler/id/b2/cmd/setpoint/fmt/json",
        b"{}",
        QoS::AtLeastOnce,
        false,
    )
    .await;
    device.ping().await;
    assert_eq!(
        device.try_recv(std::time::Duration::ZERO).await,
        Err(Silence::TimedOut),
        "still subscribed"
    );
}

// Multi-threaded like the broker's own runtime, whose worker threads have the default
// stack size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_device_management_filters() {
    let deep = vec!["l"; 15_000].join("/");
    let filter = format!("iotdm-1/{deep}");

    // Refused by max_topic_levels before the platform rewrites it; all carry on.
    let p = platform().await;
    let mut b1 = p.device("b1").await;
    assert_eq!(
        b1.subscribe(&[(&filter, QoS::AtLeastOnce)]).await,
        [SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError)]
    );
    b1.unsubscribe(&[&filter]).await;
    b1.ping().await;
    drop(b1);
    p.device("b2").await.ping().await;

    // Allowed that deep: routed in the device's view, then removed.
    let p = platform_with(|config| config.limits.max_topic_levels = 100_000).await;
    let mut b1 = p.device("b1").await;
    let mut app = p.app("a:acme:dash").await;
    assert_eq!(
        b1.subscribe(&[(&filter, QoS::AtLeastOnce)]).await,
        [granted(QoS::AtLeastOnce)]
    );
    app.publish_to(
        &format!("iotdm-1/type/boiler/id/b1/{deep}"),
        b"reboot",
        QoS::AtLeastOnce,
        false,
    )
    .await;
    let request = b1.next_publish().await;
    assert_eq!(
        (&*request.topic, text(&request)),
        (filter.as_str(), "reboot")
    );
    b1.unsubscribe(&[&filter]).await;
    assert_eq!(p.broker.stats().subscriptions, 0);
    b1.disconnect().await;
    p.device("b2").await.ping().await;
}
