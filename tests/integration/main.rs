//! End-to-end tests against real `shoal` processes. One test binary (one link step)
//! holding every suite.

mod support;

mod bad_input;
mod chaos;
mod coordination;
mod deploy;
mod durability;
mod etcdctl;
mod gateway;
mod kv;
mod operations;
mod ranges;
mod tls;
mod transactions;
