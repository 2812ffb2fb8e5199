//! Where jobs come from. Every source publishes complete job sets (jobs and the sinks they
//! name) through a `watch` channel, so the assembly always sees the latest one and a slow
//! consumer never queues stale sets.
//!
//! - [`FileSource`]: the standalone YAML file, reloaded when it changes or on SIGHUP.
//! - [`ClusterSource`]: the job shard the operator publishes for this node.
//!
//! A source of profiles that are not pulled (eBPF, a push receiver) gets an
//! [`OutputsHandle`](crate::OutputsHandle) from the assembly and sends envelopes through it;
//! [`EbpfSource`] follows the `ebpf` plan of the job sets, so it changes with them.

mod cluster;
mod ebpf;
mod file;

use std::sync::Arc;

use kubeprof_crds::{job::ScrapeJob, policy::SinkSpec};
use tokio::sync::watch;

pub use cluster::{
    ClusterSource, KubeSecrets, Observed, spawn_ebpf_reporter, spawn_health_reporter,
};
pub use ebpf::{EbpfPlan, EbpfSource, EbpfStatus, EbpfTargets, Roots, StandaloneTargets};
pub use file::FileSource;

/// What a source publishes: the jobs to run and the sinks they send to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobSet {
    /// One job per address and enabled profile type.
    pub jobs: Vec<ScrapeJob>,
    /// The sinks.
    pub sinks: Vec<SinkSpec>,
    /// What the eBPF profiler samples; `None`: no BPF program is loaded.
    pub ebpf: Option<EbpfPlan>,
}

/// A source of job sets.
pub trait JobSource {
    /// The latest job set, and every later one.
    fn subscribe(&self) -> watch::Receiver<Arc<JobSet>>;
}
