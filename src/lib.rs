//! fieldbridge: polls serial and Modbus field devices and turns them into MQTT devices.

pub mod event;
pub mod registers;
