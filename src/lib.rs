//! Shoal: a distributed, strongly consistent key-value and coordination store.
//! See ARCHITECTURE.md for the map of this crate.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod backup;
pub mod bench;
pub mod certs;
pub mod chaos;
pub mod cli;
pub mod client;
pub mod config;
pub mod ctl;
pub mod gossip;
pub mod http_probe;
pub mod parent_watch;
pub mod placement;
pub mod proto;
pub mod range;
pub mod router;
pub mod server;
pub mod snapshot_cli;
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod txn;
