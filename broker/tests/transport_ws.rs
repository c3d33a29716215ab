//! MQTT over WebSocket (`ws`, `wss`) with a tokio-tungstenite client: subprotocol
//! negotiation, publishing and subscribing both ways with plain TCP clients, MQTT packets
//! split across frames, text frames refused, the platform's status naming the transport,
//! and MQTT 5 clients over WebSocket.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use fieldbridge_broker::config::{ListenerConfig, ListenerProtocol};
use fieldbridge_broker::{Config, RunningBroker};
use fieldbridge_mqtt::codec::{Disconnect, Packet, Property, QoS, ReasonCode, SubscribeFilter};
use futures::{SinkExt, StreamExt};
use support::pki::{Ca, ClientTls, Validity};
use support::{
    connect5_packet, granted, login_packet, props, publish_with, text, Client, DEADLINE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A broker with a WebSocket listener first and a plain one second.
async fn broker(ws: ListenerConfig, platform: Option<&std::path::Path>) -> RunningBroker {
    let mut config = match platform {
        Some(registry) => support::platform_config("acme", Some(registry)),
        None => Config {
            sys_interval: Duration::ZERO,
            ..Config::default()
        },
    };
    config.listeners = vec![ws, ListenerConfig::mqtt(loopback())];
    support::start(config).await
}

fn ws_listener() -> ListenerConfig {
    ListenerConfig {
        protocol: ListenerProtocol::Ws,
        ..ListenerConfig::mqtt(loopback())
    }
}

/// The client side of the WebSocket handshake over `stream`, offering `subprotocols`.
async fn open_ws<S>(
    stream: S,
    scheme: &str,
    addr: SocketAddr,
    subprotocols: &str,
) -> Result<(WebSocketStream<S>, Option<String>), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = format!("{scheme}://{addr}/mqtt")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(subprotocols).expect("header"),
    );
    let (ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|error| error.to_string())?;
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    Ok((ws, chosen))
}

/// Bridges a WebSocket to a byte stream the MQTT test client speaks over: every write
/// becomes a binary frame, with frames cut at `frame_limit` bytes.
fn bridge<S>(ws: WebSocketStream<S>, frame_limit: usize) -> tokio::io::DuplexStream
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (near, far) = tokio::io::duplex(1 << 20);
    let (mut far_read, mut far_write) = tokio::io::split(far);
    let (mut sink, mut source) = ws.split();
    tokio::spawn(async move {
        let mut buf = vec![0u8; frame_limit];
        loop {
            match far_read.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = sink.close().await;
                    return;
                }
                Ok(read) => {
                    let frame = Message::Binary(Bytes::copy_from_slice(&buf[..read]));
                    if sink.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(Ok(message)) = source.next().await {
            if let Message::Binary(data) = message {
                if far_write.write_all(&data).await.is_err() {
                    return;
                }
            }
        }
        let _ = far_write.shutdown().await;
    });
    near
}

#[tokio::test]
async fn ws_clients_publish_and_subscribe() {
    let broker = broker(ws_listener(), None).await;
    let ws_addr = broker.local_addrs()[0];
    let plain_addr = broker.local_addrs()[1];

    for offered in ["mqtt", "mqttv3.1", "wamp, mqtt"] {
        let stream = TcpStream::connect(ws_addr).await.expect("connect");
        let (ws, chosen) = open_ws(stream, "ws", ws_addr, offered)
            .await
            .expect("handshake");
        let expected = if offered == "mqttv3.1" {
            "mqttv3.1"
        } else {
            "mqtt"
        };
        assert_eq!(chosen.as_deref(), Some(expected), "offered {offered}");
        // 7-byte frames: packets span several frames.
        let (mut client, connack) = Client::over(bridge(ws, 7))
            .handshake(login_packet(&format!("ws-{expected}"), None, None))
            .await;
        assert_eq!(connack.code, ReasonCode::Success);
        assert_eq!(
            client.subscribe(&[("to-ws/#", QoS::AtLeastOnce)]).await,
            [granted(QoS::AtLeastOnce)]
        );
        let mut plain = Client::log_in(plain_addr, "plain", None, None).await;
        plain.subscribe(&[("from-ws/#", QoS::AtLeastOnce)]).await;
        let big = "x".repeat(100_000);
        plain
            .publish_to("to-ws/big", big.as_bytes(), QoS::AtLeastOnce, false)
            .await;
        assert_eq!(text(&client.next_publish().await), big);
        client
            .publish_to("from-ws/hello", offered.as_bytes(), QoS::AtLeastOnce, false)
            .await;
        assert_eq!(text(&plain.next_publish().await), offered);
        client.disconnect().await;
        plain.disconnect().await;
    }
}

#[tokio::test]
async fn ws_refuses_other_subprotocols_and_text_frames() {
    let broker = broker(ws_listener(), None).await;
    let ws_addr = broker.local_addr();
    let stream = TcpStream::connect(ws_addr).await.expect("connect");
    let refused = open_ws(stream, "ws", ws_addr, "wamp, stomp").await;
    assert!(
        refused.as_ref().is_err_and(|error| error.contains("400")),
        "{:?}",
        refused.map(|(_, chosen)| chosen)
    );

    // MQTT must come in binary frames: a text frame ends the connection.
    let stream = TcpStream::connect(ws_addr).await.expect("connect");
    let (mut ws, _) = open_ws(stream, "ws", ws_addr, "mqtt")
        .await
        .expect("handshake");
    ws.send(Message::text("CONNECT")).await.expect("send");
    let end = tokio::time::timeout(DEADLINE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the broker kept the connection open");
}

#[tokio::test]
async fn wss_with_a_test_ca_and_platform_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "good");
    let server = ca.server(Validity::Current);
    let registry = dir.path().join("registry.db");
    let (tokens, keys) = support::register(&registry, "acme", &[("gw", "g1")], &["dash"]).await;
    let wss = ListenerConfig {
        protocol: ListenerProtocol::Wss,
        cert_file: Some(server.cert_file.clone()),
        key_file: Some(server.key_file.clone()),
        ..ListenerConfig::mqtt(loopback())
    };
    let broker = broker(wss, Some(&registry)).await;
    let wss_addr = broker.local_addr();
    let mut app = Client::log_in(
        broker.local_addrs()[1],
        "a:acme:dash",
        Some(&keys[0].0),
        Some(&keys[0].1),
    )
    .await;
    app.subscribe(&[
        ("iot-2/type/gw/id/g1/mon", QoS::AtMostOnce),
        ("iot-2/type/gw/id/g1/evt/+/fmt/+", QoS::AtMostOnce),
    ])
    .await;

    let tls = support::pki::connect(wss_addr, &ClientTls::trusting(&ca.ca_file))
        .await
        .expect("TLS handshake");
    let (ws, chosen) = open_ws(tls, "wss", wss_addr, "mqtt")
        .await
        .expect("WebSocket handshake");
    assert_eq!(chosen.as_deref(), Some("mqtt"));
    let (mut device, connack) = Client::over(bridge(ws, 4096))
        .handshake(login_packet(
            "d:acme:gw:g1",
            Some("use-token-auth"),
            Some(&tokens[0]),
        ))
        .await;
    assert_eq!(connack.code, ReasonCode::Success);
    let status = app.next_publish().await;
    let status: serde_json::Value = serde_json::from_slice(&status.payload).expect("JSON");
    assert_eq!(status["Action"], "Connect");
    assert_eq!(status["Protocol"], "mqtt-wss");
    assert_eq!(status["Ssl"], true);

    device
        .publish_to(
            "iot-2/evt/status/fmt/json",
            b"{\"ok\":true}",
            QoS::AtLeastOnce,
            false,
        )
        .await;
    let event = app.next_publish().await;
    assert_eq!(&*event.topic, "iot-2/type/gw/id/g1/evt/status/fmt/json");
    device.send(Packet::Disconnect(Disconnect::default())).await;
    let status = app.next_publish().await;
    let status: serde_json::Value = serde_json::from_slice(&status.payload).expect("JSON");
    assert_eq!(status["Action"], "Disconnect");
}

/// An MQTT 5 client over WebSocket (packets split across 5-byte frames): its CONNACK
/// carries the broker's properties, and its properties, topic aliases and subscription
/// identifiers work as over TCP, with a plain TCP MQTT 5 client on the other side.
#[tokio::test]
async fn mqtt5_over_websocket() {
    let broker = broker(ws_listener(), None).await;
    let ws_addr = broker.local_addrs()[0];
    let plain_addr = broker.local_addrs()[1];
    let stream = TcpStream::connect(ws_addr).await.expect("connect");
    let (ws, chosen) = open_ws(stream, "ws", ws_addr, "mqtt")
        .await
        .expect("handshake");
    assert_eq!(chosen.as_deref(), Some("mqtt"));
    let (mut client, connack) = Client::over(bridge(ws, 5))
        .handshake(connect5_packet("ws-5", true))
        .await;
    assert_eq!(connack.code, ReasonCode::Success);
    assert!(
        connack
            .properties
            .topic_alias_maximum()
            .is_some_and(|&max| max > 0),
        "{connack:?}"
    );
    let suback = client
        .subscribe_with(
            vec![SubscribeFilter::new("to-ws/#", QoS::AtLeastOnce)],
            props([Property::SubscriptionIdentifier(7)]),
        )
        .await;
    assert_eq!(suback.return_codes, [granted(QoS::AtLeastOnce)]);

    let (mut plain, _) = Client::connect_with(plain_addr, connect5_packet("plain-5", true)).await;
    plain
        .subscribe_with(
            vec![SubscribeFilter::new("from-ws/#", QoS::AtLeastOnce)],
            Default::default(),
        )
        .await;
    plain
        .publish(publish_with(
            "to-ws/a",
            "to the browser",
            QoS::AtLeastOnce,
            1,
            props([Property::UserProperty(("k".into(), "v".into()))]),
        ))
        .await;
    let got = client.next_publish().await;
    assert_eq!((&*got.topic, text(&got)), ("to-ws/a", "to the browser"));
    assert_eq!(
        got.properties.user_properties().collect::<Vec<_>>(),
        [&("k".into(), "v".into())]
    );
    assert_eq!(
        got.properties
            .subscription_identifiers()
            .collect::<Vec<_>>(),
        [7]
    );
    // A topic alias set by the WebSocket client, then used alone.
    for (topic, payload) in [("from-ws/b", "first"), ("", "second")] {
        let pkid = client.pkid();
        client
            .publish(publish_with(
                topic,
                payload,
                QoS::AtLeastOnce,
                pkid,
                props([
                    Property::TopicAlias(3),
                    Property::ContentType("text/plain".into()),
                ]),
            ))
            .await;
        let got = plain.next_publish().await;
        assert_eq!((&*got.topic, text(&got)), ("from-ws/b", payload));
        assert_eq!(
            got.properties.content_type().map(|c| &**c),
            Some("text/plain")
        );
    }
    client.disconnect().await;
    plain.disconnect().await;
}
