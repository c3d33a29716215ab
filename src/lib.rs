//! fieldbridge: polls serial and Modbus field devices and turns them into MQTT devices.

pub mod config;
pub mod event;
pub mod registers;
pub mod backoff;
pub mod bus;
pub mod serial_line;
pub mod sim;
pub mod store;
pub mod cli;
pub mod device;
pub mod gateway;
pub mod output;
pub mod ratelimit;
pub mod plan;
pub mod uplink;
pub mod command;
pub mod metrics;
