//! The placement driver's work on this node: splitting the data ranges it leads when
//! they grow past the limits, and keeping the meta range's map of the ranges current.
//! (Spreading leaders and replicas over the nodes comes next.)

pub mod splitter;
