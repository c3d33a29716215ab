//! MQTT as both fieldbridge programs speak it: the packet codec the broker and the load
//! generator share, the topic rules, broker URLs, and the platform's client identities and
//! fixed values, which the gateway follows and the broker enforces.

pub mod codec;
pub mod platform;
pub mod topic;
pub mod url;
