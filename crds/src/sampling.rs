//! Replica sampling: profile a bounded number of each workload's pods instead of all of them,
//! so that profile volume does not grow with autoscaling (a Deployment scaled from 5 to 500
//! replicas still sends the profiles of `maxPods` pods). Google-Wide Profiling samples machines
//! the same way: a few replicas of a service represent all of them, and rotating which ones
//! covers every replica over time.
//!
//! The choice itself (a stable hash of each pod's UID, per workload) is the operator's; this
//! module holds the API.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// The shortest `rotationPeriod`: each rotation republishes the jobs of every sampled workload,
/// and a pod profiled for less than a few scrape intervals yields little.
pub const MIN_ROTATION_PERIOD: Duration = Duration::from_secs(60);

/// Which pods of each workload are profiled: at most `maxPods`, or `percent` of them (rounded
/// up, at least `minPods`). A workload is the pods' controller (a Deployment, through its
/// ReplicaSets; a StatefulSet, DaemonSet, Job or bare ReplicaSet), or the value of
/// `workloadLabel` when set; a pod with neither is a workload of its own. Pods are chosen by a
/// stable hash of their UID (rendezvous hashing), so a pod added to or removed from a workload
/// changes at most one other pod's choice, and unrelated pods change nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.maxPods) != has(self.percent)").message("exactly one of maxPods or percent must be set"),
    validation = Rule::new("!has(self.minPods) || has(self.percent)").message("minPods goes with percent (maxPods is already a count)"),
    validation = Rule::new("!has(self.rotationPeriod) || duration(self.rotationPeriod) >= duration('1m')").message("rotationPeriod must be at least 1m"),
)]
pub struct Sampling {
    /// Profile at most this many pods of each workload (exactly one of `maxPods` and
    /// `percent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_pods: Option<i32>,
    /// Profile this percentage of each workload's pods, rounded up (so a workload with a pod
    /// always has one profiled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub percent: Option<i32>,
    /// With `percent`: profile at least this many pods of each workload (all of them when it
    /// has fewer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_pods: Option<i32>,
    /// Choose again every period (at least 1m, at most 24h), so that every replica is
    /// profiled over time. Periods are aligned on the Unix epoch: every operator replica
    /// chooses the same pods at the same time. Unset: the choice changes only when pods do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period: Option<Duration>,
    /// Group pods into workloads by the value of this pod label (e.g.
    /// `app.kubernetes.io/name`) instead of by their controller. Pods without the label are
    /// grouped by their controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = crate::limits::MAX_LABEL_KEY_LENGTH))]
    pub workload_label: Option<String>,
}
