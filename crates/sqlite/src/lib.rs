//! What the SQLite writers of the gateway's queue and the broker's persistence share: the
//! kind of fault behind a failed write, a writing connection that is replaced when a failed
//! transaction leaves its state in doubt, and the bookkeeping of an outage's log lines.

mod connection;
mod fault;
mod outage;

pub use connection::ReopeningConnection;
pub use fault::Fault;
pub use outage::{OutageLog, Report};
