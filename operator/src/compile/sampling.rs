//! Replica sampling ([`Sampling`]): which of each workload's pods are profiled. Pure and
//! deterministic given the time.
//!
//! - A pod's workload is the value of `workloadLabel` when the pod has that label, else its
//!   controller resolved to what scales it ([`owner`]: a Deployment through its ReplicaSets), else
//!   the pod alone. Every workload gets its own quota: a large Deployment does not crowd out a
//!   small one.
//! - The quota: `maxPods`, or `percent` of the workload's pods rounded up and at least `minPods`;
//!   never more than the workload has.
//! - The choice is rendezvous (highest-random-weight) hashing: each pod weighs
//!   `xxh3(uid, seed = epoch)` and the `quota` heaviest are profiled. A pod that joins changes
//!   the set only when it outweighs the lightest chosen pod (it replaces that one); a pod that
//!   leaves changes it only when it was chosen (the next heaviest takes its place). Pods of other
//!   workloads never matter. A fixed `hashmod` modulus, by contrast, reshuffles every pod when
//!   the replica count changes, and profiles a fixed fraction rather than a bounded number.
//! - Rotation: the epoch is `floor(now / rotationPeriod)` (0 without rotation), so each period
//!   draws new weights and, over enough periods, every replica is profiled. Periods are aligned
//!   on the Unix epoch, so every operator replica (and a restarted one) chooses alike.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use kubeprof_crds::{Sampling, packed::PackedMap};

use super::{Owner, PodInfo};

/// The label a Deployment puts on the pods (and in the name) of each of its ReplicaSets.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The workload behind a pod's controller `kind`/`name`: the Deployment of a ReplicaSet named
/// `<deployment>-<pod-template-hash>` (the pod carries that hash as a label), so that old and new
/// ReplicaSets of a rollout share one quota; the controller itself otherwise. Reading the
/// ReplicaSet's own ownerReference would need a watch of every ReplicaSet: the naming is what
/// the Deployment controller guarantees.
pub fn owner(kind: &str, name: &str, labels: &PackedMap) -> Owner {
    if kind == "ReplicaSet"
        && let Some(hash) = labels
            .get(POD_TEMPLATE_HASH_LABEL)
            .filter(|h| !h.is_empty())
        && let Some(deployment) = name
            .strip_suffix(hash)
            .and_then(|rest| rest.strip_suffix('-'))
            .filter(|d| !d.is_empty())
    {
        return Owner {
            kind: "Deployment".into(),
            name: deployment.into(),
        };
    }
    Owner {
        kind: kind.into(),
        name: name.into(),
    }
}

/// How many of `pods` pods a workload profiles.
pub fn quota(sampling: &Sampling, pods: usize) -> usize {
    let at_least = |n: i32| usize::try_from(n.max(1)).unwrap_or(usize::MAX);
    let wanted = match (sampling.max_pods, sampling.percent) {
        (Some(max), _) => at_least(max),
        (None, Some(percent)) => {
            let percent = usize::try_from(percent.clamp(1, 100)).unwrap_or(100);
            pods.saturating_mul(percent)
                .div_ceil(100)
                .max(sampling.min_pods.map_or(1, at_least))
        }
        // Refused by validation; profiling everything is the safe reading.
        (None, None) => pods,
    };
    wanted.min(pods)
}

/// A pod's weight in `epoch`.
pub fn weight(uid: &str, epoch: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(uid.as_bytes(), epoch)
}

/// Of one workload's pod UIDs, the `quota` heaviest in `epoch` (ties, which need equal 64-bit
/// hashes, go to the UID that sorts first).
pub fn choose<'a>(
    uids: impl IntoIterator<Item = &'a str>,
    quota: usize,
    epoch: u64,
) -> BTreeSet<&'a str> {
    let mut weighed: Vec<(u64, &str)> = uids.into_iter().map(|u| (weight(u, epoch), u)).collect();
    if quota < weighed.len() {
        weighed.select_nth_unstable_by(quota, |a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        weighed.truncate(quota);
    }
    weighed.into_iter().map(|(_, u)| u).collect()
}

/// The time sampling reads, and the earliest rotation that would change a choice made at it.
#[derive(Debug)]
pub(super) struct Clock {
    now: Duration,
    next: Option<Duration>,
}

impl Clock {
    /// Sampling at `now` (since the Unix epoch).
    pub(super) fn at(now: Duration) -> Self {
        Self { now, next: None }
    }

    /// The epoch of `period` (0 without rotation).
    fn epoch(&self, period: Option<Duration>) -> u64 {
        match period.map(|p| p.as_millis()).filter(|p| *p > 0) {
            Some(p) => u64::try_from(self.now.as_millis() / p).unwrap_or(u64::MAX),
            None => 0,
        }
    }

    /// A choice was made in `period`'s current epoch: it changes at the next one.
    fn rotates(&mut self, period: Option<Duration>) {
        let Some(p) = period.map(|p| p.as_millis()).filter(|p| *p > 0) else {
            return;
        };
        let boundary = (self.now.as_millis() / p + 1).saturating_mul(p);
        let boundary = Duration::from_millis(u64::try_from(boundary).unwrap_or(u64::MAX));
        self.next = Some(self.next.map_or(boundary, |n| n.min(boundary)));
    }

    /// When a choice made so far changes next.
    pub(super) fn next_rotation(&self) -> Option<Duration> {
        self.next
    }
}

/// The workload of `pod` under `sampling`.
fn workload<'p>(pod: &'p PodInfo, sampling: &Sampling) -> (&'p str, &'p str, &'p str) {
    if let Some(value) = sampling
        .workload_label
        .as_ref()
        .and_then(|l| pod.labels.get(l))
    {
        return (&pod.namespace, "label", value);
    }
    match &pod.owner {
        Some(o) => (&pod.namespace, &o.kind, &o.name),
        None => (&pod.namespace, "Pod", &pod.name),
    }
}

/// Which of `pods` are profiled (aligned with `pods`): per workload, as `sampling_of` says for
/// the pod's namespace (`None`: every pod).
pub(super) fn sample<'s>(
    pods: &[&PodInfo],
    sampling_of: impl Fn(&str) -> Option<&'s Sampling>,
    clock: &mut Clock,
) -> Vec<bool> {
    let mut keep = vec![true; pods.len()];
    // A workload's pods share a namespace, hence a sampling.
    let mut workloads: BTreeMap<(&str, &str, &str), (&Sampling, Vec<usize>)> = BTreeMap::new();
    for (i, pod) in pods.iter().enumerate() {
        if let Some(s) = sampling_of(&pod.namespace) {
            workloads
                .entry(workload(pod, s))
                .or_insert_with(|| (s, Vec::new()))
                .1
                .push(i);
        }
    }
    for (s, members) in workloads.into_values() {
        let quota = quota(s, members.len());
        if quota >= members.len() {
            continue;
        }
        let period = s.rotation_period.map(|p| p.std());
        let chosen = choose(
            members.iter().map(|i| pods[*i].uid.as_str()),
            quota,
            clock.epoch(period),
        );
        clock.rotates(period);
        for i in members {
            keep[i] = chosen.contains(pods[i].uid.as_str());
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> PackedMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_replica_set_of_a_deployment_counts_as_the_deployment() {
        let hashed = labels(&[(POD_TEMPLATE_HASH_LABEL, "7d4b9c8f6")]);
        assert_eq!(
            owner("ReplicaSet", "web-7d4b9c8f6", &hashed),
            Owner {
                kind: "Deployment".into(),
                name: "web".into()
            }
        );
        // A ReplicaSet of its own (no hash label, or a name that does not end in it) stays one.
        for (name, l) in [
            ("web-7d4b9c8f6", labels(&[])),
            ("batch", hashed.clone()),
            ("-7d4b9c8f6", hashed.clone()),
        ] {
            assert_eq!(owner("ReplicaSet", name, &l).kind, "ReplicaSet", "{name}");
        }
        for kind in ["StatefulSet", "DaemonSet", "Job"] {
            assert_eq!(
                owner(kind, "db-7d4b9c8f6", &hashed),
                Owner {
                    kind: kind.into(),
                    name: "db-7d4b9c8f6".into()
                }
            );
        }
    }

    #[test]
    fn quotas_count_pods_bounded_by_the_workload() {
        let max = |n| Sampling {
            max_pods: Some(n),
            ..Default::default()
        };
        let percent = |p, min| Sampling {
            percent: Some(p),
            min_pods: min,
            ..Default::default()
        };
        assert_eq!(quota(&max(3), 500), 3);
        assert_eq!(quota(&max(3), 2), 2);
        assert_eq!(quota(&percent(10, None), 500), 50);
        assert_eq!(quota(&percent(10, None), 11), 2, "rounded up");
        assert_eq!(quota(&percent(10, None), 1), 1);
        assert_eq!(quota(&percent(10, Some(5)), 20), 5, "at least minPods");
        assert_eq!(quota(&percent(10, Some(5)), 3), 3, "at most every pod");
        assert_eq!(quota(&percent(100, None), 7), 7);
    }

    #[test]
    fn the_next_rotation_is_the_next_boundary_of_the_shortest_period() {
        let mut clock = Clock::at(Duration::from_secs(3_725));
        assert_eq!(clock.epoch(None), 0);
        assert_eq!(clock.epoch(Some(Duration::from_secs(3_600))), 1);
        clock.rotates(None);
        assert_eq!(clock.next_rotation(), None);
        clock.rotates(Some(Duration::from_secs(3_600)));
        clock.rotates(Some(Duration::from_secs(600)));
        assert_eq!(clock.next_rotation(), Some(Duration::from_secs(4_200)));
    }
}
