//! kubeprof-operator: reconciles ProfilingPolicies, ProfilingTargets and annotated pods into
//! per-node scrape-job shards (see DESIGN.md).
#![forbid(unsafe_code)]

mod cli;
pub mod compile;
mod grants;
mod index;
mod leader;
mod metrics;
#[cfg(test)]
mod mock;
mod owner;
mod publish;
mod runtime;
mod status;

pub use cli::{main, main_from};
pub use index::pod_info;
pub use publish::{CONTENT_HASH_ANNOTATION, payload_bytes, shard_config_map};

/// The allocator the operator binaries install: jemalloc returns freed memory to the system,
/// where glibc keeps the peak of a full compile at 10,000 pods as RSS.
pub use tikv_jemallocator::Jemalloc;

// The unit tests run on the allocator the binaries install (the heap metrics read it).
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: Jemalloc = Jemalloc;
