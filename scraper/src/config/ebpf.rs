//! The standalone file's `ebpf:` section: profile processes of this machine with the eBPF
//! sampler, with no change to them.
//!
//! ```yaml
//! ebpf:
//!   sampleRate: 97          # samples per second per CPU (1..=1000)
//!   period: 15s             # one profile per process group every period (1s..=1h)
//!   processes:              # `all: true`, or any of the lists (a process matching one is in)
//!     comms: [my-server]    # the main thread's name (/proc/<pid>/comm, at most 15 bytes)
//!     pids: [1234]
//!     executables: [/usr/local/bin/my-server]   # /proc/<pid>/exe, exact path
//!     cgroups: [/system.slice/my.service]       # cgroup v2 path, its descendants included
//!   labels: {env: dev}      # static labels
//!   relabelings: []         # over the labels and __meta_process_pid/comm/exe
//!   sinks: [local]          # default: every sink
//! ```
//!
//! Processes are matched when the scraper scans `/proc` (at the start of each period and every
//! couple of seconds within it), so a process that starts and exits between two scans is missed.

use kubeprof_crds::{Duration, RelabelConfig, relabel::Labels};
use serde::Deserialize;

/// The highest sample rate a file may ask for: 1 kHz per CPU already costs a few percent.
pub const MAX_SAMPLE_RATE: u32 = 1_000;
/// The shortest period.
pub const MIN_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest period: samples wait in memory until it ends.
pub const MAX_PERIOD: std::time::Duration = std::time::Duration::from_secs(3_600);
/// Entries of each process list at most.
pub const MAX_SELECTORS: usize = 256;
/// Longest `comm` the kernel keeps (`TASK_COMM_LEN` - 1): a longer name could never match.
pub const MAX_COMM: usize = 15;

/// The `ebpf:` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EbpfConfig {
    /// Samples per second per CPU while a selected process runs (default 97).
    #[serde(default = "default_sample_rate")]
    pub sample_rate: u32,
    /// How often the samples become profiles (default 15s).
    #[serde(default = "default_period")]
    pub period: Duration,
    /// Which processes.
    pub processes: ProcessSelector,
    /// Static labels, before relabelling.
    #[serde(default)]
    pub labels: Labels,
    /// Relabel rules over the labels and `__meta_process_*`.
    #[serde(default)]
    pub relabelings: Vec<RelabelConfig>,
    /// Sink names (default: all).
    #[serde(default)]
    pub sinks: Vec<String>,
}

/// Which processes of the machine are profiled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessSelector {
    /// Every process of the machine (no list may be given with it).
    #[serde(default)]
    pub all: bool,
    /// Process ids.
    #[serde(default)]
    pub pids: Vec<u32>,
    /// Names of the main thread (`/proc/<pid>/comm`).
    #[serde(default)]
    pub comms: Vec<String>,
    /// Executable paths (`/proc/<pid>/exe`), absolute.
    #[serde(default)]
    pub executables: Vec<String>,
    /// cgroup v2 paths (as in `/proc/<pid>/cgroup`, e.g. `/system.slice/nginx.service`); the
    /// processes of the cgroup and of its descendants.
    #[serde(default)]
    pub cgroups: Vec<String>,
}

fn default_sample_rate() -> u32 {
    97
}

fn default_period() -> Duration {
    Duration::from_secs(15)
}

/// Why the section is refused: (field below `ebpf.`, message).
pub(super) fn check(e: &EbpfConfig, sink_names: &[&str]) -> Result<(), (String, String)> {
    let err = |f: &str, m: String| Err((format!("ebpf.{f}"), m));
    if e.sample_rate == 0 || e.sample_rate > MAX_SAMPLE_RATE {
        return err(
            "sampleRate",
            format!("{} Hz is outside 1..={MAX_SAMPLE_RATE}", e.sample_rate),
        );
    }
    let period = e.period.std();
    if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) {
        return err("period", format!("{} is outside 1s..=1h", e.period));
    }
    let p = &e.processes;
    let lists = [
        ("pids", p.pids.len()),
        ("comms", p.comms.len()),
        ("executables", p.executables.len()),
        ("cgroups", p.cgroups.len()),
    ];
    for (name, len) in lists {
        if len > MAX_SELECTORS {
            return err(
                &format!("processes.{name}"),
                format!("{len} entries; at most {MAX_SELECTORS}"),
            );
        }
    }
    let listed = lists.iter().any(|(_, len)| *len > 0);
    if p.all && listed {
        return err(
            "processes",
            "`all: true` selects every process; remove the lists, or `all`".into(),
        );
    }
    if !p.all && !listed {
        return err(
            "processes",
            "selects nothing: set `all: true`, or list pids, comms, executables or cgroups".into(),
        );
    }
    if let Some(i) = p.pids.iter().position(|&pid| pid == 0) {
        return err(&format!("processes.pids[{i}]"), "0 is not a process".into());
    }
    for (i, c) in p.comms.iter().enumerate() {
        if c.is_empty() || c.len() > MAX_COMM {
            return err(
                &format!("processes.comms[{i}]"),
                format!(
                    "{c:?}: a comm is 1 to {MAX_COMM} bytes (the kernel truncates longer names)"
                ),
            );
        }
    }
    for (i, x) in p.executables.iter().enumerate() {
        if !x.starts_with('/') {
            return err(
                &format!("processes.executables[{i}]"),
                format!("{x:?} is not an absolute path"),
            );
        }
    }
    for (i, c) in p.cgroups.iter().enumerate() {
        if !c.starts_with('/') || c.split('/').any(|s| s == "..") {
            return err(
                &format!("processes.cgroups[{i}]"),
                format!("{c:?} is not an absolute cgroup path without `..`"),
            );
        }
    }
    if let Err(x) = kubeprof_crds::relabel::compile_all(&e.relabelings) {
        return err("relabelings", x.to_string());
    }
    for (j, s) in e.sinks.iter().enumerate() {
        if !sink_names.contains(&s.as_str()) {
            return err(&format!("sinks[{j}]"), format!("no sink is named {s:?}"));
        }
    }
    Ok(())
}
