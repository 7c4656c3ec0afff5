//! The liaotian load generator (issue 6).
//!
//! It drives real gateways over real WebSockets with protocol v1, and measures what a client sees:
//! deliveries per second, lost and duplicated deliveries, latency from send to delivery, and the CPU
//! and memory of every server process from `/proc`. A run may be split over several worker processes,
//! each under the per-process file descriptor limit.
//!
//! Map: [`plan`] (the traffic shape and who plays which client), [`client`] (one connection),
//! [`worker`] (the clients of one process), [`run`] (the parent: workers, barrier, `/proc`),
//! [`stack`] (nats-server and gateway processes), [`report`] (merging, JSON lines, markdown),
//! [`hist`] (latency histogram), [`procstat`] (`/proc` readings).
//! Scenarios with their own clients: [`storm`] (resume storm), [`churn`] (presence churn), and
//! [`catchup`] (persister catch-up, run by the parent alone); [`inject`] publishes straight into
//! JetStream as a gateway would.

pub mod catchup;
pub mod churn;
pub mod client;
pub mod hist;
pub mod inject;
pub mod plan;
pub mod procstat;
pub mod report;
pub mod run;
pub mod stack;
pub mod storm;
pub mod worker;

pub use plan::{Shape, WorkerSpec};
pub use report::{RunResult, Totals, merge};
pub use worker::{WorkerReport, run as run_worker};
