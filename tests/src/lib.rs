//! Test harness for Switchboard's end-to-end tests: real etcd servers and clusters, Switchboard's
//! binaries as child processes, a fault-injecting TCP proxy, and deadline-bound waiting.
//!
//! Everything that waits does so with [`wait_until`] / [`wait_for`]: a condition polled until a
//! deadline, never a sleep. Every process the harness starts is killed when its handle is
//! dropped, and its output goes to a log file whose tail is put into error messages.

pub mod binaries;
pub mod etcd;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod stack;
pub mod wait;

mod http;

pub use binaries::bin_path;
pub use etcd::{EtcdCluster, EtcdServer, etcd_binary};
pub use ports::free_port;
pub use process::{ChildProcess, CommandSpec, RestartableProcess};
pub use proxy::TcpProxy;
pub use stack::{
    Coordinator, ItemAnswer, SbctlOutput, SbctlRunner, Sidecar, TestEnv, sbctl, unique_prefix,
};
pub use wait::{GiveUp, give_up, wait_for, wait_until};
