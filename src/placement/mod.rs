//! The placement driver's work on this node: splitting the data ranges it leads when
//! they grow past the limits, keeping the meta range's map of the ranges current, and
//! spreading range leaders over the nodes. (Placing replicas comes with the elastic
//! cluster.)

pub mod balancer;
pub mod splitter;
