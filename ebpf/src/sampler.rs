//! The kernel side: loads `bpf/profile.bpf.c`, opens one CPU-clock perf event per online CPU,
//! keeps the selected set current, and drains the aggregated samples.
//!
//! Draining without losing or double-counting a sample: the program counts into one of two
//! buffers (a counts hash and a stack-trace map each), chosen by `control.active_buffer`. A drain
//! flips that index, waits until no program can still be running with the old value (an RCU
//! grace period: perf-event BPF programs run with preemption disabled, and
//! `membarrier(MEMBARRIER_CMD_GLOBAL)` returns only after `synchronize_rcu()`), then reads and
//! clears the old buffer while the new one fills. A program reads the index once, so a sample's
//! stacks and count are always in the same buffer.
#![allow(unsafe_code)] // perf_event_open and membarrier have no safe wrapper; each block says why.

use std::{
    cell::RefCell,
    collections::{BTreeSet, HashMap},
    os::fd::{AsRawFd as _, FromRawFd as _, IntoRawFd as _, OwnedFd},
    rc::Rc,
    time::Duration,
};

use libbpf_rs::{
    Link, MapCore as _, MapFlags, MapHandle, Object, ObjectBuilder, RingBuffer, RingBufferBuilder,
};

use crate::SamplerError;

/// The compiled program, aligned for libelf.
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);
static OBJECT: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/profile.bpf.o")));

const TASK_COMM_LEN: usize = 16;
/// `struct sample_key`: tgid, pid, user stack id, kernel stack id (4 bytes each), cgroup id (8),
/// comm (16).
const SAMPLE_KEY_LEN: usize = 4 * 4 + 8 + TASK_COMM_LEN;
/// What `bpf_get_stackid` returns for an empty stack (-EFAULT).
const EMPTY_STACK: i32 = -14;

/// Sizes of the kernel maps; their memory is allocated in the kernel when the sampler starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapCapacities {
    /// Distinct (thread, stacks) keys per period and buffer. A sample that finds the map full is
    /// counted in [`Losses::counts_full`].
    pub sample_keys: u32,
    /// Distinct stacks (user and kernel together) per period and buffer. Each takes about 1 KiB
    /// of kernel memory, twice (two buffers). A stack that does not fit (or collides with
    /// another in its hash bucket) is counted in [`Losses::stacks`]; its sample still counts.
    pub stacks: u32,
    /// Processes that may be selected by tgid.
    pub tgids: u32,
    /// Cgroups that may be selected by id.
    pub cgroups: u32,
    /// Processes remembered as announced to user space.
    pub known_processes: u32,
}

impl Default for MapCapacities {
    fn default() -> Self {
        Self {
            sample_keys: 16_384,
            stacks: 16_384,
            tgids: 16_384,
            cgroups: 4_096,
            known_processes: 16_384,
        }
    }
}

/// What is sampled: a task is sampled when `all` is set, or its tgid is in `tgids`, or its
/// cgroup v2 id is in `cgroup_ids`. The idle task never is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Every process of the node, host processes included.
    pub all: bool,
    /// Processes by tgid (the pid of `/proc/<pid>`).
    pub tgids: BTreeSet<u32>,
    /// Cgroups by cgroup v2 id (see [`crate::cgroup_id`]): every process in exactly that cgroup
    /// (not its descendants).
    pub cgroup_ids: BTreeSet<u64>,
}

/// Samples the program could not record, since the sampler started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    /// Samples dropped because the counts map was full.
    pub counts_full: u64,
    /// New processes not announced at once (the ring buffer was full); they are read at the
    /// drain instead, so a short-lived one may go unsymbolised.
    pub announcements: u64,
    /// Stacks not recorded (stack map full or a hash collision); the sample counts without them.
    pub stacks: u64,
}

/// One aggregated key of a drained buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawSample {
    pub tgid: u32,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// `None`: no stack (kernel thread, or user-mode sample for the kernel stack).
    /// `Some(Err(()))`: the stack was lost.
    pub user_stack: Option<Result<u32, ()>>,
    pub kernel_stack: Option<Result<u32, ()>>,
    pub count: u64,
}

/// One drained buffer.
#[derive(Debug, Default)]
pub(crate) struct RawDrain {
    pub samples: Vec<RawSample>,
    /// Stack id -> addresses, innermost first.
    pub stacks: HashMap<u32, Vec<u64>>,
}

/// Parses a `struct sample_key`; `None` for a key of another size.
pub(crate) fn parse_sample_key(key: &[u8], count: u64) -> Option<RawSample> {
    if key.len() != SAMPLE_KEY_LEN {
        return None;
    }
    let u32_at = |i: usize| {
        key.get(i..i + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let stack = |id: u32| match id as i32 {
        id if id >= 0 => Some(Ok(id as u32)),
        EMPTY_STACK => None,
        _ => Some(Err(())),
    };
    let cgroup_id = key
        .get(16..24)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_ne_bytes)?;
    let comm = key.get(24..24 + TASK_COMM_LEN)?;
    let comm = &comm[..comm.iter().position(|&b| b == 0).unwrap_or(comm.len())];
    Some(RawSample {
        tgid: u32_at(0)?,
        pid: u32_at(4)?,
        user_stack: stack(u32_at(8)?),
        kernel_stack: stack(u32_at(12)?),
        cgroup_id,
        comm: String::from_utf8_lossy(comm).into_owned(),
        count,
    })
}

/// Parses a stack-trace map value: addresses up to the first zero.
pub(crate) fn parse_stack(value: &[u8]) -> Vec<u64> {
    value
        .chunks_exact(8)
        .filter_map(|c| c.try_into().ok().map(u64::from_ne_bytes))
        .take_while(|&a| a != 0)
        .collect()
}

/// Parses `/sys/devices/system/cpu/online` (`0-3,5,7-8`).
pub(crate) fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 65_536 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

struct Maps {
    counts: [MapHandle; 2],
    stacks: [MapHandle; 2],
    allowed_tgids: MapHandle,
    allowed_cgroups: MapHandle,
    known_tgids: MapHandle,
    control: MapHandle,
    losses: MapHandle,
}

/// The loaded program, its perf events and maps.
pub(crate) struct Sampler {
    maps: Maps,
    ring: RingBuffer<'static>,
    announced: Rc<RefCell<Vec<u32>>>,
    // Kept for their Drop: detaching and closing the perf events, then the object.
    _links: Vec<Link>,
    _object: Object,
    active: u32,
    selection: Selection,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("active", &self.active)
            .field("selection", &self.selection)
            .finish_non_exhaustive()
    }
}

fn load(what: &'static str) -> impl FnOnce(libbpf_rs::Error) -> SamplerError {
    move |source| SamplerError::Load { what, source }
}

impl Sampler {
    /// Loads the program and starts sampling every online CPU at `rate_hz`, with an empty
    /// selection.
    pub(crate) fn start(rate_hz: u32, caps: MapCapacities) -> Result<Self, SamplerError> {
        let mut open = ObjectBuilder::default()
            .open_memory(&OBJECT.0)
            .map_err(load("open the BPF object"))?;
        for mut map in open.maps_mut() {
            let cap = match map.name().to_str() {
                Some("counts_0" | "counts_1") => caps.sample_keys,
                Some("stacks_0" | "stacks_1") => caps.stacks,
                Some("allowed_tgids") => caps.tgids,
                Some("allowed_cgroups") => caps.cgroups,
                Some("known_tgids") => caps.known_processes,
                _ => continue,
            };
            map.set_max_entries(cap.max(1))
                .map_err(load("size the maps"))?;
        }
        let object = open.load().map_err(load(
            "load the BPF program (needs root or CAP_BPF + CAP_PERFMON)",
        ))?;
        let handle = |name: &'static str| -> Result<MapHandle, SamplerError> {
            let map = object
                .maps()
                .find(|m| m.name().to_str() == Some(name))
                .ok_or(SamplerError::MissingMap(name))?;
            MapHandle::try_from(&map).map_err(load("open a map"))
        };
        let maps = Maps {
            counts: [handle("counts_0")?, handle("counts_1")?],
            stacks: [handle("stacks_0")?, handle("stacks_1")?],
            allowed_tgids: handle("allowed_tgids")?,
            allowed_cgroups: handle("allowed_cgroups")?,
            known_tgids: handle("known_tgids")?,
            control: handle("control")?,
            losses: handle("losses")?,
        };
        let ring_map = handle("new_processes")?;
        let announced = Rc::new(RefCell::new(Vec::new()));
        let sink = Rc::clone(&announced);
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&ring_map, move |data: &[u8]| {
                if let Some(tgid) = data
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_ne_bytes)
                {
                    sink.borrow_mut().push(tgid);
                }
                0
            })
            .map_err(load("open the ring buffer"))?;
        let ring = builder.build().map_err(load("open the ring buffer"))?;

        let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|s| parse_cpu_list(&s))
            .ok_or(SamplerError::OnlineCpus)?;
        let mut links = Vec::with_capacity(cpus.len() + 1);
        for prog in object.progs_mut() {
            match prog.name().to_str() {
                Some("on_cpu_clock") => {
                    for &cpu in &cpus {
                        let fd = open_cpu_clock(cpu, rate_hz)?;
                        let link = prog
                            .attach_perf_event(fd.as_raw_fd())
                            .map_err(load("attach to the perf event"))?;
                        // The link owns the event now: it closes it when dropped.
                        let _ = fd.into_raw_fd();
                        links.push(link);
                    }
                }
                Some("on_exec") => links.push(
                    prog.attach_raw_tracepoint("sched_process_exec")
                        .map_err(load("attach to sched_process_exec"))?,
                ),
                _ => {}
            }
        }
        let sampler = Self {
            maps,
            ring,
            announced,
            _links: links,
            _object: object,
            active: 0,
            selection: Selection::default(),
        };
        sampler.write_control()?;
        Ok(sampler)
    }

    fn write_control(&self) -> Result<(), SamplerError> {
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&self.active.to_ne_bytes());
        value[4..].copy_from_slice(&u32::from(self.selection.all).to_ne_bytes());
        self.maps
            .control
            .update(&0u32.to_ne_bytes(), &value, MapFlags::ANY)
            .map_err(update("control"))
    }

    /// Makes `selection` the sampled set, changing only what differs.
    pub(crate) fn set_selection(&mut self, selection: &Selection) -> Result<(), SamplerError> {
        let one = [1u8];
        for tgid in selection.tgids.difference(&self.selection.tgids) {
            self.maps
                .allowed_tgids
                .update(&tgid.to_ne_bytes(), &one, MapFlags::ANY)
                .map_err(update("allowed_tgids"))?;
        }
        for tgid in self.selection.tgids.difference(&selection.tgids) {
            let _ = self.maps.allowed_tgids.delete(&tgid.to_ne_bytes());
        }
        for id in selection.cgroup_ids.difference(&self.selection.cgroup_ids) {
            self.maps
                .allowed_cgroups
                .update(&id.to_ne_bytes(), &one, MapFlags::ANY)
                .map_err(update("allowed_cgroups"))?;
        }
        for id in self.selection.cgroup_ids.difference(&selection.cgroup_ids) {
            let _ = self.maps.allowed_cgroups.delete(&id.to_ne_bytes());
        }
        self.selection = selection.clone();
        self.write_control()
    }

    /// Waits up to `timeout` for processes sampled for the first time (or since their exec),
    /// and returns them.
    pub(crate) fn poll_new_processes(&mut self, timeout: Duration) -> Vec<u32> {
        // An error is EINTR, or a closed ring: either way there is nothing to read now.
        let _ = self.ring.poll(timeout);
        std::mem::take(&mut *self.announced.borrow_mut())
    }

    /// Forgets that `tgid` was announced (it exited), so a process reusing the pid is announced.
    pub(crate) fn forget_process(&self, tgid: u32) {
        let _ = self.maps.known_tgids.delete(&tgid.to_ne_bytes());
    }

    /// Flips the buffers and returns the old one's contents, clearing it.
    pub(crate) fn drain(&mut self) -> Result<RawDrain, SamplerError> {
        let old = self.active as usize;
        self.active ^= 1;
        self.write_control()?;
        wait_for_running_programs();

        let counts = &self.maps.counts[old];
        let keys: Vec<Vec<u8>> = counts.keys().collect();
        let mut drain = RawDrain::default();
        for key in &keys {
            let Ok(Some(value)) = counts.lookup(key, MapFlags::ANY) else {
                continue;
            };
            let count = value
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes)
                .unwrap_or(0);
            if let Some(sample) = parse_sample_key(key, count) {
                drain.samples.push(sample);
            }
        }
        for key in &keys {
            let _ = counts.delete(key);
        }
        let stacks = &self.maps.stacks[old];
        let ids: Vec<Vec<u8>> = stacks.keys().collect();
        for key in &ids {
            let Some(id) = key
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes)
            else {
                continue;
            };
            if let Ok(Some(value)) = stacks.lookup(key, MapFlags::ANY) {
                drain.stacks.insert(id, parse_stack(&value));
            }
        }
        for key in &ids {
            let _ = stacks.delete(key);
        }
        Ok(drain)
    }

    /// The losses since the start.
    pub(crate) fn losses(&self) -> Losses {
        let total = |i: u32| -> u64 {
            match self
                .maps
                .losses
                .lookup_percpu(&i.to_ne_bytes(), MapFlags::ANY)
            {
                Ok(Some(per_cpu)) => per_cpu
                    .iter()
                    .filter_map(|v| {
                        v.get(..8)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_ne_bytes)
                    })
                    .sum(),
                _ => 0,
            }
        };
        Losses {
            counts_full: total(0),
            announcements: total(1),
            stacks: total(2),
        }
    }
}

fn update(map: &'static str) -> impl FnOnce(libbpf_rs::Error) -> SamplerError {
    move |source| SamplerError::UpdateMap { map, source }
}

/// `struct perf_event_attr` up to `sample_max_stack` (PERF_ATTR_SIZE_VER5, 112 bytes): the
/// kernel accepts any published size.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_freq: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved_2: u16,
}

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
/// `attr.freq`: `sample_freq` is a frequency, not a period.
const PERF_ATTR_FLAG_FREQ: u64 = 1 << 10;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// Opens a CPU-clock event sampling every task on `cpu` at `rate_hz`.
fn open_cpu_clock(cpu: u32, rate_hz: u32) -> Result<OwnedFd, SamplerError> {
    let attr = PerfEventAttr {
        type_: PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: PERF_COUNT_SW_CPU_CLOCK,
        sample_freq: u64::from(rate_hz),
        flags: PERF_ATTR_FLAG_FREQ,
        ..PerfEventAttr::default()
    };
    // SAFETY: `attr` is a valid, initialised perf_event_attr of the size it declares, alive for
    // the call; the other arguments are plain integers (pid -1 and a CPU: every task on it).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1 as libc::pid_t,
            cpu as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(SamplerError::PerfEvent {
            cpu,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: the kernel just returned this fd, open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Returns once no BPF program that started before the call can still be running.
fn wait_for_running_programs() {
    // SAFETY: membarrier takes plain integers and touches no memory of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_GLOBAL,
            0 as libc::c_uint,
            0 as libc::c_int,
        )
    };
    if ret != 0 {
        // nohz_full kernels refuse MEMBARRIER_CMD_GLOBAL. A program runs for microseconds; this
        // is a thousand times that.
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0,2-3,7"), Some(vec![0, 2, 3, 7]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn sample_keys_parse_and_foreign_sizes_are_refused() {
        let mut key = Vec::new();
        key.extend_from_slice(&7u32.to_ne_bytes());
        key.extend_from_slice(&8u32.to_ne_bytes());
        key.extend_from_slice(&3i32.to_ne_bytes());
        key.extend_from_slice(&(-14i32).to_ne_bytes());
        key.extend_from_slice(&99u64.to_ne_bytes());
        key.extend_from_slice(b"spin\0\0\0\0\0\0\0\0\0\0\0\0");
        let s = parse_sample_key(&key, 5).unwrap();
        assert_eq!(
            (s.tgid, s.pid, s.cgroup_id, s.comm.as_str(), s.count),
            (7, 8, 99, "spin", 5)
        );
        assert_eq!((s.user_stack, s.kernel_stack), (Some(Ok(3)), None));
        key[12..16].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(
            parse_sample_key(&key, 1).unwrap().kernel_stack,
            Some(Err(()))
        );
        assert_eq!(parse_sample_key(&key[1..], 1), None);
        let mut stack = Vec::new();
        for a in [0x10u64, 0x20, 0, 0] {
            stack.extend_from_slice(&a.to_ne_bytes());
        }
        assert_eq!(parse_stack(&stack), vec![0x10, 0x20]);
    }
}
