//! Deltas of cumulative profiles.
//!
//! Go's mutex and block profiles, and the `alloc_objects`/`alloc_space` sample types of the heap
//! (allocs) profile, count since process start. A [`DeltaTracker`] per job keeps the previous
//! scrape's cumulative values per series — a series is the stack of function names (leaf first,
//! inlined frames included) plus the sample's labels — and turns each new profile into the
//! difference. Which sample types are cumulative is read from the profile's own sample types
//! (type and unit), not guessed from its URL; the others (`inuse_*`) pass through unchanged.
//!
//! The first scrape (and the first after a restart) has no baseline. Then a profile with only
//! cumulative types (mutex, block) sends nothing, and a memory profile is sent with its `alloc_*`
//! values zeroed so that in-use memory is not lost; this keeps every sent value a true delta, at
//! the cost of the first interval's allocations.
//!
//! A process restart shows as a counter going down (or the profile's time going backwards):
//! the baseline starts over and nothing negative is ever sent.

use std::collections::HashMap;

use xxhash_rust::xxh3::Xxh3;

use super::{Profile, string};
use crate::proto::perftools::profiles::Sample;

/// The (type, unit) pairs Go reports as counts since process start.
const CUMULATIVE: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("contentions", "count"),
    ("delay", "nanoseconds"),
];

/// Indices of the cumulative sample types of `profile`.
pub fn cumulative_indices(profile: &Profile) -> Vec<usize> {
    profile
        .sample_type
        .iter()
        .enumerate()
        .filter(|(_, vt)| {
            let pair = (string(profile, vt.r#type), string(profile, vt.unit));
            CUMULATIVE.contains(&pair)
        })
        .map(|(i, _)| i)
        .collect()
}

/// Bounds on a tracker's memory.
#[derive(Clone, Copy, Debug)]
pub struct DeltaLimits {
    /// Most series remembered per job (default 100,000); past it the tracker resets.
    pub max_series: usize,
}

impl Default for DeltaLimits {
    fn default() -> Self {
        Self {
            max_series: 100_000,
        }
    }
}

/// What [`DeltaTracker::apply`] produced.
#[derive(Debug)]
pub enum DeltaOutcome {
    /// The delta since the previous scrape: send it.
    Delta(Profile),
    /// No baseline to subtract from; the new profile is the baseline now. `send` holds the
    /// non-cumulative part (memory's `inuse_*`) when there is one.
    Baseline {
        /// What to send, if anything.
        send: Option<Profile>,
        /// `first`, `restart`, `shape_changed` or `state_limit` (a metric label).
        reason: &'static str,
    },
}

/// The previous cumulative values of one job.
#[derive(Debug, Default)]
pub struct DeltaTracker {
    limits: DeltaLimits,
    /// (type, unit) of every sample type, to notice a profile of another shape.
    shape: Vec<(String, String)>,
    cumulative: Vec<usize>,
    time_nanos: i64,
    previous: HashMap<u64, Box<[i64]>>,
    has_baseline: bool,
}

impl DeltaTracker {
    /// A tracker with no baseline.
    pub fn new(limits: DeltaLimits) -> Self {
        Self {
            limits,
            ..Default::default()
        }
    }

    /// Approximate bytes held (for the `delta state` metric).
    pub fn state_bytes(&self) -> usize {
        // key + boxed slice header + values + the map's per-entry overhead.
        self.previous.len() * (8 + 16 + 8 * self.cumulative.len() + 16)
            + self
                .shape
                .iter()
                .map(|(a, b)| a.len() + b.len() + 48)
                .sum::<usize>()
    }

    /// Series remembered.
    pub fn series(&self) -> usize {
        self.previous.len()
    }

    /// Turns `profile` into the delta against the previous call's profile.
    pub fn apply(&mut self, mut profile: Profile) -> DeltaOutcome {
        let shape: Vec<(String, String)> = profile
            .sample_type
            .iter()
            .map(|vt| {
                (
                    string(&profile, vt.r#type).to_owned(),
                    string(&profile, vt.unit).to_owned(),
                )
            })
            .collect();
        let mut reason = None;
        if shape != self.shape {
            self.shape = shape;
            self.cumulative = cumulative_indices(&profile);
            reason = Some(if self.has_baseline {
                "shape_changed"
            } else {
                "first"
            });
        } else if !self.has_baseline {
            reason = Some("first");
        }
        if self.cumulative.is_empty() {
            // Nothing cumulative: nothing to do.
            return DeltaOutcome::Delta(profile);
        }
        if reason.is_none() && profile.time_nanos != 0 && profile.time_nanos < self.time_nanos {
            reason = Some("restart");
        }

        let samples = aggregate(&mut profile);
        let mut current: HashMap<u64, Box<[i64]>> = HashMap::with_capacity(samples.len());
        for (key, sample) in &samples {
            current.insert(
                *key,
                self.cumulative.iter().map(|&i| sample.value[i]).collect(),
            );
        }
        if reason.is_none() {
            let went_down = current.iter().any(|(key, values)| {
                self.previous
                    .get(key)
                    .is_some_and(|prev| prev.iter().zip(values.iter()).any(|(p, c)| c < p))
            });
            if went_down {
                reason = Some("restart");
            }
        }
        let previous_time = self.time_nanos;
        self.time_nanos = profile.time_nanos;
        if current.len() > self.limits.max_series {
            self.previous.clear();
            self.has_baseline = false;
            return DeltaOutcome::Baseline {
                send: None,
                reason: "state_limit",
            };
        }
        let previous = std::mem::replace(&mut self.previous, current);
        self.has_baseline = true;

        let baseline = reason.is_some();
        let mut out = Vec::with_capacity(samples.len());
        for (key, mut sample) in samples {
            for (j, &i) in self.cumulative.iter().enumerate() {
                let prev = if baseline {
                    // No baseline: the whole cumulative value is unknown history.
                    sample.value[i]
                } else {
                    previous.get(&key).map_or(0, |p| p[j])
                };
                sample.value[i] -= prev;
            }
            if sample.value.iter().any(|&v| v != 0) {
                out.push(sample);
            }
        }
        profile.sample = out;
        if let Some(reason) = reason {
            let only_cumulative = self.cumulative.len() == profile.sample_type.len();
            return DeltaOutcome::Baseline {
                send: (!only_cumulative).then_some(profile),
                reason,
            };
        }
        if previous_time > 0 && profile.time_nanos > previous_time {
            profile.duration_nanos = profile.time_nanos - previous_time;
        }
        DeltaOutcome::Delta(profile)
    }
}

/// Merges samples of the same series (stack of function names + labels), summing their
/// values; returns them with their series keys, in first-seen order.
fn aggregate(profile: &mut Profile) -> Vec<(u64, Sample)> {
    let samples = std::mem::take(&mut profile.sample);
    let profile = &*profile;
    let function_names: HashMap<u64, &str> = profile
        .function
        .iter()
        .map(|f| (f.id, string(profile, f.name)))
        .collect();
    let location_hash: HashMap<u64, u64> = profile
        .location
        .iter()
        .map(|l| {
            let mut h = Xxh3::new();
            for line in &l.line {
                h.update(
                    function_names
                        .get(&line.function_id)
                        .copied()
                        .unwrap_or("")
                        .as_bytes(),
                );
                h.update(&[0]);
            }
            if l.line.is_empty() {
                // Unsymbolized: the address is all there is.
                h.update(&l.address.to_le_bytes());
            }
            (l.id, h.digest())
        })
        .collect();
    let mut index: HashMap<u64, usize> = HashMap::with_capacity(samples.len());
    let mut out: Vec<(u64, Sample)> = Vec::with_capacity(samples.len());
    for sample in samples {
        let mut h = Xxh3::new();
        for id in &sample.location_id {
            h.update(&location_hash.get(id).copied().unwrap_or(0).to_le_bytes());
        }
        h.update(&[0xff]);
        let mut labels: Vec<(&str, &str, i64, &str)> = sample
            .label
            .iter()
            .map(|l| {
                (
                    string(profile, l.key),
                    string(profile, l.str),
                    l.num,
                    string(profile, l.num_unit),
                )
            })
            .collect();
        labels.sort_unstable();
        for (k, v, n, u) in labels {
            h.update(k.as_bytes());
            h.update(&[0]);
            h.update(v.as_bytes());
            h.update(&[0]);
            h.update(&n.to_le_bytes());
            h.update(u.as_bytes());
            h.update(&[0]);
        }
        let key = h.digest();
        match index.get(&key) {
            Some(&i) => {
                for (acc, v) in out[i].1.value.iter_mut().zip(&sample.value) {
                    *acc += v;
                }
            }
            None => {
                index.insert(key, out.len());
                out.push((key, sample));
            }
        }
    }
    out
}
