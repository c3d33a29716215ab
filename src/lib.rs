//! fieldbridge: polls serial and Modbus field devices and turns them into MQTT devices.

pub mod backoff;
pub mod bus;
pub mod cli;
pub mod command;
pub mod config;
pub mod device;
pub mod event;
pub mod gateway;
pub mod metrics;
pub mod output;
pub mod plan;
pub mod registers;
pub mod serial_line;
pub mod store;
pub mod uplink;
