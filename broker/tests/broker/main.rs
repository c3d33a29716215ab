//! Integration tests of the broker: real brokers (in-process or the binary) on loopback,
//! real clients (raw packets through the codec, rumqttc, Mosquitto's command-line tools).

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod deep_topics;
mod malformed;
mod metrics;
mod mqtt5;
mod persistence;
mod process;
mod qos;
mod reload;
mod retained;
mod sessions;
