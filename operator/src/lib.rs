//! kubeprof-operator: reconciles ProfilingPolicies, ProfilingTargets and annotated pods into
//! per-node scrape-job shards (see DESIGN.md).
#![forbid(unsafe_code)]

pub mod compile;
pub mod selector;
