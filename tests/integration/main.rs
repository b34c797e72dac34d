//! End-to-end tests against real `shoal` processes. One test binary (one link step)
//! holding every suite.

/// Clusters of these suites start with one data range (see `support::Cluster::start_with`).
pub const SPLIT: bool = false;

mod support;

mod alarms;
mod auth;
mod backup;
mod bad_input;
mod chaos;
mod coordination;
mod dashboard;
mod deploy;
mod durability;
mod etcdctl;
mod gateway;
mod kv;
mod membership;
mod operations;
mod ranges;
mod redis;
mod storage_faults;
mod tls;
mod transactions;
