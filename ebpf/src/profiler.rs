//! The profiler: the sampler, the processes it saw, and the symboliser, turned into one pprof
//! profile per group of processes per period.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use kubeprof_pprof::Profile;

use crate::{
    SamplerError,
    process::{self, ObjectCache, Process, ProcessFacts},
    profile::{self, Frame, MappingInfo, ResolvedSample},
    sampler::{Losses, MapCapacities, RawSample, Sampler, Selection},
    symbolize::{Budget, FrameFn, Frames, Symbols},
};

/// How the profiler runs. The defaults suit a node of a few hundred pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfilerConfig {
    /// Samples per second per CPU while a selected process runs (97 Hz by default: prime, so it
    /// does not beat with periodic work; Alloy, Parca Agent and the OpenTelemetry profiler
    /// default to 19 Hz).
    pub sample_rate_hz: u32,
    /// Sizes of the kernel maps.
    pub capacities: MapCapacities,
    /// Processes remembered at once (their mappings and names); a process beyond it is profiled
    /// with unnamed frames.
    pub max_processes: usize,
    /// Mapped files held open at once, shared by the processes that map them.
    pub max_open_files: usize,
    /// Estimated bytes of symbols cached (names and files per address); the least recently
    /// used files' entries go first.
    pub max_symbol_cache_bytes: usize,
    /// Files the symboliser holds parsed at once, by their total size (their tables take about
    /// as much memory); beyond it the least recently used are unloaded once their samples are
    /// symbolised, and parsed again when needed. One file larger than this is still parsed.
    pub max_symbolizer_file_bytes: u64,
    /// Files larger than this are symbolised from their ELF symbol table only, without reading
    /// their DWARF (no file names or line numbers): parsing the debug info of a binary of
    /// hundreds of megabytes (a compiler, a browser) would take about as much memory.
    pub max_debug_info_file_bytes: u64,
    /// Where `/proc` is (`/host/proc` in a container that mounts the host's).
    pub proc_root: PathBuf,
}

impl Default for ProfilerConfig {
    fn default() -> Self {
        Self {
            sample_rate_hz: 97,
            capacities: MapCapacities::default(),
            max_processes: 8_192,
            max_open_files: 1_024,
            max_symbol_cache_bytes: 8 << 20,
            max_symbolizer_file_bytes: 32 << 20,
            max_debug_info_file_bytes: 64 << 20,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// Counters of one collection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CollectStats {
    /// Samples drained.
    pub samples: u64,
    /// Distinct stack frames of the drained samples (user and kernel).
    pub frames: u64,
    /// Those with a function name: `frames_named / frames` is the symbolisation coverage.
    pub frames_named: u64,
    /// Processes remembered after the collection.
    pub processes: usize,
    /// Mapped files held open after the collection.
    pub open_files: usize,
    /// Losses in the kernel since the profiler started (cumulative).
    pub losses: Losses,
}

impl CollectStats {
    /// The share of frames with a function name, 1.0 when there was none.
    pub fn coverage(&self) -> f64 {
        if self.frames == 0 {
            1.0
        } else {
            self.frames_named as f64 / self.frames as f64
        }
    }
}

/// The profile of one group of processes for one period.
#[derive(Clone, Debug)]
pub struct GroupProfile<K> {
    /// The caller's group key.
    pub key: K,
    /// The processes whose samples it holds, by pid.
    pub processes: Vec<ProcessFacts>,
    /// The pprof CPU profile.
    pub profile: Profile,
}

/// One drained period: every sample of the selected processes, symbolised.
#[derive(Debug)]
pub struct Collection {
    /// When the period started.
    pub start: SystemTime,
    /// How long it lasted.
    pub duration: Duration,
    /// Counters.
    pub stats: CollectStats,
    samples: Vec<ResolvedSample>,
    processes: BTreeMap<u32, ProcessFacts>,
    period_ns: i64,
}

impl Collection {
    /// The processes that were sampled in the period.
    pub fn processes(&self) -> impl Iterator<Item = &ProcessFacts> {
        self.processes.values()
    }

    /// One profile per group: `group` names the group of each sampled process (a container,
    /// found from the pid or the cgroup id), or `None` to leave its samples out.
    pub fn profiles<K: Ord + Clone>(
        &self,
        mut group: impl FnMut(&ProcessFacts) -> Option<K>,
    ) -> Vec<GroupProfile<K>> {
        let keys: HashMap<u32, K> = self
            .processes
            .values()
            .filter_map(|p| group(p).map(|k| (p.pid, k)))
            .collect();
        let mut groups: BTreeMap<K, Vec<&ResolvedSample>> = BTreeMap::new();
        for s in &self.samples {
            if let Some(k) = keys.get(&s.tgid) {
                groups.entry(k.clone()).or_default().push(s);
            }
        }
        let time_nanos = self
            .start
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let duration_nanos = self.duration.as_nanos() as i64;
        groups
            .into_iter()
            .map(|(key, samples)| {
                let pids: HashSet<u32> = samples.iter().map(|s| s.tgid).collect();
                GroupProfile {
                    processes: self
                        .processes
                        .values()
                        .filter(|p| pids.contains(&p.pid))
                        .cloned()
                        .collect(),
                    profile: profile::build(&samples, time_nanos, duration_nanos, self.period_ns),
                    key,
                }
            })
            .collect()
    }
}

/// The eBPF CPU profiler of one node.
///
/// A caller (the scraper's eBPF source) runs it on a thread of its own:
///
/// ```no_run
/// # use kubeprof_ebpf::{Profiler, ProfilerConfig, Selection};
/// # use std::time::Duration;
/// let mut profiler = Profiler::start(ProfilerConfig::default())?;
/// profiler.set_selection(&Selection { all: true, ..Selection::default() })?;
/// loop {
///     let collection = profiler.run_period(Duration::from_secs(15))?;
///     for p in collection.profiles(|process| Some(process.pid)) {
///         // label with p.processes[0].meta_labels() and the container's labels, send p.profile
///     }
/// #   break;
/// }
/// # Ok::<(), kubeprof_ebpf::SamplerError>(())
/// ```
#[derive(Debug)]
pub struct Profiler {
    sampler: Sampler,
    config: ProfilerConfig,
    processes: HashMap<u32, Process>,
    objects: ObjectCache,
    symbols: Symbols,
    period_start: SystemTime,
}

/// Collections without a sample after which a live process is forgotten.
const MAX_IDLE_COLLECTIONS: u32 = 4;

/// Name of the frame standing for a stack the kernel could not record.
pub const LOST_STACK: &str = "[lost stack]";

impl Profiler {
    /// Loads the BPF program and starts sampling (nothing is selected yet). Needs root, or
    /// CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (for `/proc/<pid>/map_files`).
    pub fn start(config: ProfilerConfig) -> Result<Self, SamplerError> {
        if config.sample_rate_hz == 0 || config.sample_rate_hz > 10_000 {
            return Err(SamplerError::SampleRate(config.sample_rate_hz));
        }
        let sampler = Sampler::start(config.sample_rate_hz, config.capacities)?;
        Ok(Self {
            sampler,
            objects: ObjectCache::new(config.max_open_files),
            symbols: Symbols::new(Budget {
                cache_bytes: config.max_symbol_cache_bytes,
                loaded_bytes: config.max_symbolizer_file_bytes,
            }),
            processes: HashMap::new(),
            period_start: SystemTime::now(),
            config,
        })
    }

    /// Makes `selection` the set of sampled processes (applied at once, in the kernel).
    pub fn set_selection(&mut self, selection: &Selection) -> Result<(), SamplerError> {
        self.sampler.set_selection(selection)
    }

    /// Reads the processes sampled for the first time, waiting up to `timeout` for one. Call it
    /// often (the [`run_period`](Self::run_period) loop does): a process is read while it lives.
    pub fn poll(&mut self, timeout: Duration) {
        for tgid in self.sampler.poll_new_processes(timeout) {
            self.read_process(tgid);
        }
    }

    fn read_process(&mut self, tgid: u32) {
        if !self.processes.contains_key(&tgid) && self.processes.len() >= self.config.max_processes
        {
            return;
        }
        if let Some(p) = process::read_process(&self.config.proc_root, tgid, &mut self.objects) {
            self.processes.insert(tgid, p);
        }
    }

    /// What the kernel side could not record since the start.
    pub fn losses(&self) -> Losses {
        self.sampler.losses()
    }

    /// Polls for new processes until `period` has passed, then collects.
    pub fn run_period(&mut self, period: Duration) -> Result<Collection, SamplerError> {
        let deadline = Instant::now() + period;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.poll(left.min(Duration::from_millis(500)));
        }
        self.collect()
    }

    /// Drains the samples since the last collection and symbolises them.
    pub fn collect(&mut self) -> Result<Collection, SamplerError> {
        // Processes found dead before the flip have all their samples in the drained buffer:
        // they are forgotten after this collection, not before.
        let proc_root = self.config.proc_root.clone();
        let dead: Vec<u32> = self
            .processes
            .iter()
            .filter(|(pid, p)| !process::is_alive(&proc_root, **pid, p.start_time))
            .map(|(pid, _)| *pid)
            .collect();
        let raw = self.sampler.drain()?;
        let now = SystemTime::now();
        let start = std::mem::replace(&mut self.period_start, now);
        self.poll(Duration::ZERO);

        let mut refreshed = HashSet::new();
        for s in &raw.samples {
            if !self.processes.contains_key(&s.tgid) {
                self.read_process(s.tgid);
            }
            if let Some(p) = self.processes.get_mut(&s.tgid) {
                p.facts.cgroup_id = s.cgroup_id;
            }
        }
        // Addresses a process's known mappings do not hold: it mapped something since it was
        // read (dlopen), so read its mappings again once.
        for s in &raw.samples {
            let Some(Ok(id)) = s.user_stack else { continue };
            let Some(stack) = raw.stacks.get(&id) else {
                continue;
            };
            let Some(p) = self.processes.get(&s.tgid) else {
                continue;
            };
            if !refreshed.contains(&s.tgid) && stack.iter().any(|&a| p.mapping(a).is_none()) {
                refreshed.insert(s.tgid);
                if let Some(m) = process::read_mappings(&proc_root, s.tgid, &mut self.objects)
                    && let Some(p) = self.processes.get_mut(&s.tgid)
                {
                    p.mappings = m;
                }
            }
        }

        let mut stats = CollectStats::default();
        let samples = self.resolve(&raw.samples, &raw.stacks, &mut stats);
        let processes: BTreeMap<u32, ProcessFacts> = raw
            .samples
            .iter()
            .map(|s| {
                let facts = self
                    .processes
                    .get(&s.tgid)
                    .map(|p| p.facts.clone())
                    .unwrap_or_else(|| ProcessFacts {
                        pid: s.tgid,
                        comm: s.comm.clone(),
                        exe: None,
                        cgroup_id: s.cgroup_id,
                    });
                (s.tgid, facts)
            })
            .collect();

        // Forget the dead, and the long idle (no longer selected, or asleep): were one sampled
        // again, the program announces it anew.
        let sampled: HashSet<u32> = raw.samples.iter().map(|s| s.tgid).collect();
        let mut forget = dead;
        for (pid, p) in &mut self.processes {
            p.idle_collections = if sampled.contains(pid) {
                0
            } else {
                p.idle_collections + 1
            };
            if p.idle_collections > MAX_IDLE_COLLECTIONS {
                forget.push(*pid);
            }
        }
        for pid in forget {
            self.processes.remove(&pid);
            self.sampler.forget_process(pid);
        }
        let closed = self.objects.evict_unused();
        self.symbols.evict(&closed);

        stats.samples = raw.samples.iter().map(|s| s.count).sum();
        stats.processes = self.processes.len();
        stats.open_files = self.objects.len();
        stats.losses = self.sampler.losses();
        Ok(Collection {
            start,
            duration: now.duration_since(start).unwrap_or_default(),
            stats,
            samples,
            processes,
            period_ns: 1_000_000_000 / i64::from(self.config.sample_rate_hz),
        })
    }

    fn resolve(
        &mut self,
        samples: &[RawSample],
        stacks: &HashMap<u32, Vec<u64>>,
        stats: &mut CollectStats,
    ) -> Vec<ResolvedSample> {
        let stack = |s: Option<Result<u32, ()>>| -> Option<Result<&[u64], ()>> {
            match s? {
                Ok(id) => Some(stacks.get(&id).map(Vec::as_slice).ok_or(())),
                Err(()) => Some(Err(())),
            }
        };
        // Return addresses point after the call: look up the call itself (not for the leaf).
        let lookup_addr = |i: usize, a: u64| if i == 0 { a } else { a.saturating_sub(1) };

        // Every (file, offset) and kernel address first, so each file is read in one batch.
        // File -> (whether to read its DWARF, its size, offsets).
        let mut wanted: HashMap<PathBuf, (bool, u64, Vec<u64>)> = HashMap::new();
        let mut kernel_wanted = Vec::new();
        self.symbols.next_generation();
        for s in samples {
            if let Some(Ok(k)) = stack(s.kernel_stack) {
                kernel_wanted.extend(k.iter().enumerate().map(|(i, &a)| lookup_addr(i, a)));
            }
            let (Some(Ok(u)), Some(p)) = (stack(s.user_stack), self.processes.get(&s.tgid)) else {
                continue;
            };
            for (i, &a) in u.iter().enumerate() {
                let a = lookup_addr(i, a);
                if let Some((m, o)) = p.mapping(a).and_then(|m| m.object.as_ref().map(|o| (m, o))) {
                    let debug = o.size <= self.config.max_debug_info_file_bytes;
                    wanted
                        .entry(o.open_path.clone())
                        .or_insert_with(|| (debug, o.size, Vec::new()))
                        .2
                        .push(file_offset(m, a));
                }
            }
        }
        let mut user_frames: HashMap<(PathBuf, u64), Frames> = HashMap::new();
        for (path, (debug, size, offsets)) in wanted {
            let frames = self.symbols.user(&path, &offsets, debug, size);
            for (o, f) in offsets.into_iter().zip(frames) {
                user_frames.insert((path.clone(), o), f);
            }
        }
        let kernel_frames: HashMap<u64, Frames> = {
            let f = self.symbols.kernel(&kernel_wanted);
            kernel_wanted.into_iter().zip(f).collect()
        };

        let kernel_mapping = Arc::new(MappingInfo {
            start: 0,
            end: u64::MAX,
            offset: 0,
            path: "[kernel.kallsyms]".to_string(),
            build_id: String::new(),
        });
        let lost: Frames = Arc::from([FrameFn {
            name: LOST_STACK.to_string(),
            file: None,
            line: 0,
        }]);
        let mut mapping_infos: HashMap<(u32, u64), Arc<MappingInfo>> = HashMap::new();
        let mut distinct: HashSet<(u32, u64, bool)> = HashSet::new();
        let mut out = Vec::with_capacity(samples.len());
        for s in samples {
            let mut frames = Vec::new();
            match stack(s.kernel_stack) {
                Some(Ok(k)) => {
                    for (i, &a) in k.iter().enumerate() {
                        let fns = kernel_frames
                            .get(&lookup_addr(i, a))
                            .cloned()
                            .unwrap_or_else(|| Arc::from([]));
                        if distinct.insert((0, a, true)) {
                            stats.frames += 1;
                            stats.frames_named += u64::from(!fns.is_empty());
                        }
                        frames.push(Frame {
                            address: a,
                            mapping: Some(Arc::clone(&kernel_mapping)),
                            fns,
                        });
                    }
                }
                Some(Err(())) => frames.push(Frame {
                    address: 0,
                    mapping: None,
                    fns: Arc::clone(&lost),
                }),
                None => {}
            }
            let p = self.processes.get(&s.tgid);
            match stack(s.user_stack) {
                Some(Ok(u)) => {
                    for (i, &a) in u.iter().enumerate() {
                        let la = lookup_addr(i, a);
                        let m = p.and_then(|p| p.mapping(la));
                        let fns = m
                            .and_then(|m| {
                                let o = m.object.as_ref()?;
                                user_frames
                                    .get(&(o.open_path.clone(), file_offset(m, la)))
                                    .cloned()
                            })
                            .unwrap_or_else(|| Arc::from([]));
                        let mapping = m.map(|m| {
                            Arc::clone(mapping_infos.entry((s.tgid, m.start)).or_insert_with(
                                || {
                                    Arc::new(MappingInfo {
                                        start: m.start,
                                        end: m.end,
                                        offset: m.offset,
                                        path: m.path.clone(),
                                        build_id: m
                                            .object
                                            .as_ref()
                                            .and_then(|o| o.build_id.as_ref())
                                            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
                                            .unwrap_or_default(),
                                    })
                                },
                            ))
                        });
                        if distinct.insert((s.tgid, a, false)) {
                            stats.frames += 1;
                            stats.frames_named += u64::from(!fns.is_empty());
                        }
                        frames.push(Frame {
                            address: a,
                            mapping,
                            fns,
                        });
                    }
                }
                Some(Err(())) => frames.push(Frame {
                    address: 0,
                    mapping: None,
                    fns: Arc::clone(&lost),
                }),
                None => {}
            }
            out.push(ResolvedSample {
                tgid: s.tgid,
                pid: s.pid,
                comm: s.comm.clone(),
                frames,
                count: s.count,
            });
        }
        out
    }
}

/// The offset in its file of `addr`, an address inside `m` (wrapping: the offset comes from
/// `/proc`, and a wrong one must not panic).
fn file_offset(m: &process::Mapping, addr: u64) -> u64 {
    addr.wrapping_sub(m.start).wrapping_add(m.offset)
}
