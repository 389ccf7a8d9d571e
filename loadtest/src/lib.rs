//! Switchboard's load tests and benchmarks: each scenario starts real etcd, coordinator and
//! sidecars (through the end-to-end test harness), measures, and returns a report that renders
//! as a markdown table and serialises as JSON; [`report`] turns a directory of them into the
//! markdown and SVG charts of `BENCHMARKS.md`.

pub mod catalog;
pub mod chart;
pub mod feed;
pub mod fleet;
pub mod judge_sim;
pub mod load;
pub mod propagation;
pub mod read;
pub mod report;
pub mod rollback;
pub mod stage;
pub mod stats;
pub mod sync_flip;
