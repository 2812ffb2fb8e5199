//! kubeprof's API: the `ProfilingTarget` and `ProfilingPolicy` custom resources (group
//! `kubeprof.io`, version `v1alpha1`), Prometheus relabelling, and the scrape-job contract that
//! the operator publishes and the scraper reads.
//!
//! This crate performs no I/O: it is shared by the operator, the scraper and the tests.
#![forbid(unsafe_code)]

pub mod common;
pub mod constants;
pub mod duration;
pub mod health;
pub mod job;
pub mod labels;
pub mod limits;
pub mod packed;
pub mod policy;
pub mod profiles;
pub mod references;
pub mod relabel;
pub mod sampling;
pub mod target;
pub mod validation;

pub use common::*;
pub use duration::Duration;
pub use policy::{ProfilingPolicy, ProfilingPolicySpec, ProfilingPolicyStatus};
pub use profiles::{ProfileKind, Profiles, ResolvedProfile};
pub use relabel::{RelabelAction, RelabelConfig};
pub use sampling::Sampling;
pub use target::{ProfilingTarget, ProfilingTargetSpec, ProfilingTargetStatus};

/// API group of every kubeprof resource.
pub const GROUP: &str = "kubeprof.io";
/// API version of the resources in this crate.
pub const VERSION: &str = "v1alpha1";

/// Every CRD this crate defines, in the order `crdgen` writes them.
pub fn all_crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt as _;
    vec![ProfilingPolicy::crd(), ProfilingTarget::crd()]
}

/// The command that regenerates `crds/yaml/`.
pub const CRDGEN_COMMAND: &str = "cargo run -p kubeprof-crds --bin crdgen";

/// The generated CRD files: `(file name, YAML)`, each YAML starting with a do-not-edit header.
pub fn generated_crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    all_crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            let yaml = serde_yaml::to_string(&crd)?;
            Ok((
                name,
                format!("# Generated from the Rust types in crds/src by `{CRDGEN_COMMAND}`. Do not edit.\n{yaml}"),
            ))
        })
        .collect()
}
