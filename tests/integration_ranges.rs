//! The end-to-end suites again, on clusters whose data ranges start cut at many keys
//! and split further past 50 keys: every promise they check must hold when a request's
//! keys live in several ranges (reads across ranges, two-phase commits, leases with
//! keys in several ranges, watches over the frontier).

/// Clusters of these suites start split (see `support::Cluster::start_with`).
pub const SPLIT: bool = true;

#[path = "integration/support.rs"]
mod support;

#[path = "integration/alarms.rs"]
mod alarms;
#[path = "integration/auth.rs"]
mod auth;
#[path = "integration/backup.rs"]
mod backup;
#[path = "integration/bad_input.rs"]
mod bad_input;
#[path = "integration/chaos.rs"]
mod chaos;
#[path = "integration/coordination.rs"]
mod coordination;
#[path = "integration/durability.rs"]
mod durability;
#[path = "integration/etcdctl.rs"]
mod etcdctl;
#[path = "integration/gateway.rs"]
mod gateway;
#[path = "integration/kv.rs"]
mod kv;
#[path = "integration/membership.rs"]
mod membership;
#[path = "integration/redis.rs"]
mod redis;
#[path = "integration/tls.rs"]
mod tls;
