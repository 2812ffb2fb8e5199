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
//! the baseline starts over and nothing negative is ever sent. Arithmetic never wraps: samples
//! of one series are summed with saturation, and a sum that saturates, or a difference that
//! would overflow, is treated like a restart (reason `overflow`), so every cumulative value sent
//! is in `0..=i64::MAX` whatever the target reports.
//!
//! [`DeltaTracker::apply`] expects a validated profile (one value per sample type); a sample
//! with too few values is padded with zeros rather than trusted.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

use xxhash_rust::xxh3::Xxh3;

use crate::{Profile, Sample, string};

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

/// Keys are already xxh3 digests: hashing them again would only cost time.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type DigestMap<V> = HashMap<u64, V, BuildHasherDefault<IdentityHasher>>;

/// Per-id lookup for profile tables: a vector when ids are dense (Go numbers them 1..=n),
/// a map otherwise.
fn by_id<T: Copy + Default>(entries: impl Iterator<Item = (u64, T)> + Clone) -> impl Fn(u64) -> T {
    let (count, max) = entries
        .clone()
        .fold((0usize, 0u64), |(n, m), (id, _)| (n + 1, m.max(id)));
    let dense = max as usize <= count.saturating_mul(2) + 64;
    let mut vec = Vec::new();
    let mut map = HashMap::new();
    if dense {
        vec = vec![T::default(); max as usize + 1];
        for (id, v) in entries {
            vec[id as usize] = v;
        }
    } else {
        map = entries.collect();
    }
    move |id| {
        if dense {
            usize::try_from(id)
                .ok()
                .and_then(|i| vec.get(i))
                .copied()
                .unwrap_or_default()
        } else {
            map.get(&id).copied().unwrap_or_default()
        }
    }
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
        /// `first`, `restart`, `overflow`, `shape_changed` or `state_limit` (a metric label).
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
    /// Series digest -> index into `values` (one row of `cumulative.len()` values per series).
    previous: DigestMap<usize>,
    values: Vec<i64>,
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
        self.previous.capacity() * (8 + 8)
            + self.values.capacity() * 8
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

        let (samples, index, saturated) = aggregate(&mut profile, &self.cumulative);
        let width = self.cumulative.len();
        let previous_time = self.time_nanos;
        self.time_nanos = profile.time_nanos;
        let only_cumulative = self.cumulative.len() == profile.sample_type.len();
        if samples.len() > self.limits.max_series {
            self.previous.clear();
            self.values.clear();
            self.has_baseline = false;
            // Too many series to remember, but the in-use part (memory's `inuse_*`) needs no
            // history: send it, with the cumulative values zeroed as on a first scrape.
            let send = (!only_cumulative).then(|| {
                profile.sample = samples
                    .into_iter()
                    .filter_map(|(_, mut sample)| {
                        for &i in &self.cumulative {
                            sample.value[i] = 0;
                        }
                        sample.value.iter().any(|&v| v != 0).then_some(sample)
                    })
                    .collect();
                profile
            });
            return DeltaOutcome::Baseline {
                send,
                reason: "state_limit",
            };
        }
        if reason.is_none() && saturated {
            reason = Some("overflow");
        }
        let baseline = reason.is_some();
        let (previous, values) = (&self.previous, &self.values);
        let mut next_values = Vec::with_capacity(samples.len() * width);
        let mut out = Vec::with_capacity(samples.len());
        // A counter that went down is a restart; a difference that would overflow means the
        // numbers cannot be trusted. Both are found in this one pass (one lookup per series)
        // and then zero every cumulative value, as on a first scrape.
        let (mut went_down, mut overflowed) = (false, false);
        for (key, mut sample) in samples {
            let prev = if baseline {
                None
            } else {
                previous
                    .get(&key)
                    .and_then(|&row| values.get(row * width..(row + 1) * width))
            };
            for (j, &i) in self.cumulative.iter().enumerate() {
                let current = sample.value[i];
                next_values.push(current);
                sample.value[i] = match prev {
                    // Without a baseline the whole cumulative value is unknown history.
                    _ if baseline => 0,
                    None => current.max(0),
                    Some(p) if current < p[j] => {
                        went_down = true;
                        0
                    }
                    Some(p) => current.checked_sub(p[j]).unwrap_or_else(|| {
                        overflowed = true;
                        0
                    }),
                };
            }
            if sample.value.iter().any(|&v| v != 0) {
                out.push(sample);
            }
        }
        // Row k of `next_values` is the k-th series, which is what `index` maps to.
        self.previous = index;
        self.values = next_values;
        self.has_baseline = true;
        if reason.is_none() && (went_down || overflowed) {
            reason = Some(if went_down { "restart" } else { "overflow" });
            for sample in &mut out {
                for &i in &self.cumulative {
                    sample.value[i] = 0;
                }
            }
            out.retain(|s| s.value.iter().any(|&v| v != 0));
        }
        profile.sample = out;
        if let Some(reason) = reason {
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
/// values with saturation; returns them with their series keys, in first-seen order, and
/// the map from key to position, and whether a cumulative sum saturated. Every sample comes out
/// with one value per sample type.
fn aggregate(
    profile: &mut Profile,
    cumulative: &[usize],
) -> (Vec<(u64, Sample)>, DigestMap<usize>, bool) {
    let samples = std::mem::take(&mut profile.sample);
    let width = profile.sample_type.len();
    let mut saturated = false;
    let profile = &*profile;
    let function_name = by_id(profile.function.iter().map(|f| (f.id, f.name)));
    let string_hash: Vec<u64> = profile
        .string_table
        .iter()
        .map(|s| xxhash_rust::xxh3::xxh3_64(s.as_bytes()))
        .collect();
    let location_hash = by_id(profile.location.iter().map(|l| {
        let mut h: u64 = 0x517c_c1b7_2722_0a95;
        for line in &l.line {
            let name = function_name(line.function_id);
            let nh = usize::try_from(name)
                .ok()
                .and_then(|i| string_hash.get(i))
                .copied()
                .unwrap_or(0);
            h = (h ^ nh).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
        }
        if l.line.is_empty() {
            // Unsymbolized: the address is all there is.
            h = (h ^ l.address).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
        (l.id, h)
    }));
    let mut index: DigestMap<usize> =
        DigestMap::with_capacity_and_hasher(samples.len(), Default::default());
    let mut out: Vec<(u64, Sample)> = Vec::with_capacity(samples.len());
    for mut sample in samples {
        sample.value.resize(width, 0);
        let mut stack: u64 = 0xcbf2_9ce4_8422_2325;
        for id in &sample.location_id {
            stack = (stack ^ location_hash(*id))
                .wrapping_mul(0x0100_0000_01b3)
                .rotate_left(31);
        }
        if sample.label.is_empty() {
            let key = xxhash_rust::xxh3::xxh3_64(&stack.to_le_bytes());
            saturated |= merge(&mut index, &mut out, key, sample, cumulative);
            continue;
        }
        let mut h = Xxh3::new();
        h.update(&stack.to_le_bytes());
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
        saturated |= merge(&mut index, &mut out, key, sample, cumulative);
    }
    (out, index, saturated)
}

/// Adds `sample` to its series; true when a cumulative sum overflowed (and saturated).
fn merge(
    index: &mut DigestMap<usize>,
    out: &mut Vec<(u64, Sample)>,
    key: u64,
    sample: Sample,
    cumulative: &[usize],
) -> bool {
    use std::collections::hash_map::Entry;
    let mut saturated = false;
    // One hash lookup for both the hit and the miss.
    match index.entry(key) {
        Entry::Occupied(e) => {
            let i = *e.get();
            for (j, (acc, v)) in out[i].1.value.iter_mut().zip(&sample.value).enumerate() {
                match acc.checked_add(*v) {
                    Some(sum) => *acc = sum,
                    None => {
                        *acc = acc.saturating_add(*v);
                        saturated |= cumulative.contains(&j);
                    }
                }
            }
        }
        Entry::Vacant(e) => {
            e.insert(out.len());
            out.push((key, sample));
        }
    }
    saturated
}
