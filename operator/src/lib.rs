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
