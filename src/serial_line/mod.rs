//! Line-framed ASCII devices on a serial port (GPS receivers, scales, analysers).

pub mod bus;
pub mod framer;
pub mod parser;
