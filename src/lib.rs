//! Shoal: a distributed, strongly consistent key-value and coordination store.
//! See ARCHITECTURE.md for the map of this crate.
#![forbid(unsafe_code)]

pub mod proto;
pub mod storage;
pub mod range;
