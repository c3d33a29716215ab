//! The command-line programs: `run`, `check`, `demo`. Errors leave as `anyhow` here, at
//! the binary's edge.

pub mod check;
#[cfg(feature = "demo")]
pub mod demo;
pub mod queue;
pub mod run;
