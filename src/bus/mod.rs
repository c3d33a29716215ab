//! Buses: one task per physical bus (a serial port or a TCP endpoint). It alone talks
//! on that bus and serialises every request to every slave on it.

pub mod link;
pub mod modbus;
pub mod poller;
