//! Switchboard's load tests and simulations; each scenario is a module, the binary only dispatches.

pub mod judge_sim;
