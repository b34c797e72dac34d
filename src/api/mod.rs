//! Client protocols. Handlers decode and validate, call the router, and encode the
//! reply; they never touch storage or Raft.

pub mod etcd;
pub mod gateway;
pub mod h2_authority;
pub mod health;
pub mod nodes;
pub mod oversize_status;
pub mod ranges;
pub mod redis;
