//! Fault injection with history checking (`shoal chaos`): real server processes,
//! concurrent client workloads, a seeded schedule of faults, and checkers that judge
//! the recorded histories.

pub mod checker;
