//! kubeprof-operator: reconciles ProfilingPolicies, ProfilingTargets and annotated pods into
//! per-node scrape-job shards (see DESIGN.md).
#![forbid(unsafe_code)]

pub mod apply;
pub mod cli;
pub mod compile;
pub mod controller;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod selector;
pub mod status;

/// The allocator the operator binaries install: jemalloc returns freed memory to the system,
/// where glibc keeps the peak of a full compile at 10,000 pods as RSS.
pub use tikv_jemallocator::Jemalloc;
