//! What the eBPF profiler costs, next to `perf record -F <rate> -a -g` and bcc's
//! `profile -F <rate> -af`, all three sampling every process of the machine at once while two
//! busy loops keep the CPUs busy. Run as root:
//!
//! ```text
//! cargo run --release -p kubeprof-ebpf --bin kubeprof-ebpf-bench -- [seconds per rate, 30] [rates, 97,19]
//! ```
//!
//! bcc compiles its program against the running kernel's headers: where
//! `/lib/modules/$(uname -r)/build` is missing (a custom VM kernel), point `BCC_KERNEL_SOURCE` at
//! a kernel header tree close to it.
//!
//! Per profiler process, over the same window (after a warm-up that leaves out start-up costs
//! such as bcc compiling its program): user + system CPU from `/proc/<pid>/stat`, the kernel time
//! of its BPF programs (`run_time_ns` in `/proc/<pid>/fdinfo/<prog fd>`, with
//! `kernel.bpf_stats_enabled=1`), peak RSS, and samples captured per CPU-second the machine
//! spent (at N Hz, a profiler that misses nothing captures N per CPU-second).

use std::{
    error::Error,
    io::Read as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kubeprof_ebpf::{Profiler, ProfilerConfig, Selection};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const WARMUP: Duration = Duration::from_secs(5);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("spin") => spin(),
        Some("profile") => profile(
            args.get(2).ok_or("rate")?.parse()?,
            args.get(3).ok_or("secs")?.parse()?,
            args.get(4).map(String::as_str),
        ),
        _ => {
            let secs: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(30);
            let rates: Vec<u32> = match args.get(2) {
                Some(r) => r
                    .split(',')
                    .map(str::parse)
                    .collect::<std::result::Result<_, _>>()?,
                None => vec![97, 19],
            };
            bench(secs, &rates)
        }
    }
}

fn spin() -> Result<()> {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// The kubeprof side: samples everything (or the comma-separated `pids`) for `secs`, then
/// prints the samples it collected.
fn profile(rate: u32, secs: u64, pids: Option<&str>) -> Result<()> {
    let mut config = ProfilerConfig {
        sample_rate_hz: rate,
        ..ProfilerConfig::default()
    };
    // `KUBEPROF_EBPF_BENCH_BUDGET_MIB=<files>,<cache>` replaces the symboliser's budgets, to
    // compare them (e.g. `100000,100000` for practically none).
    if let Ok(b) = std::env::var("KUBEPROF_EBPF_BENCH_BUDGET_MIB") {
        let (files, cache) = b.split_once(',').ok_or("budget: <files MiB>,<cache MiB>")?;
        config.max_symbolizer_file_bytes = files.parse::<u64>()? << 20;
        config.max_symbol_cache_bytes = cache.parse::<usize>()? << 20;
    }
    let mut p = Profiler::start(config)?;
    let selection = match pids {
        Some(pids) => Selection {
            tgids: pids
                .split(',')
                .map(str::parse)
                .collect::<std::result::Result<_, _>>()?,
            ..Selection::default()
        },
        None => Selection {
            all: true,
            ..Selection::default()
        },
    };
    p.set_selection(&selection)?;
    let start = Instant::now();
    let (mut samples, mut frames, mut named, mut profiles) = (0u64, 0u64, 0u64, 0usize);
    while start.elapsed() < Duration::from_secs(secs) {
        let left = Duration::from_secs(secs).saturating_sub(start.elapsed());
        // Periods of 15 s, as deployed.
        let c = p.run_period(left.min(Duration::from_secs(15)))?;
        samples += c.stats.samples;
        frames += c.stats.frames;
        named += c.stats.frames_named;
        profiles += c.profiles(|p| Some(p.pid)).len();
    }
    println!(
        "samples={samples} profiles={profiles} coverage={:.3} losses={:?}",
        named as f64 / frames.max(1) as f64,
        p.losses()
    );
    Ok(())
}

#[derive(Clone, Copy, Default)]
struct Cpu {
    /// utime + stime, in clock ticks.
    ticks: u64,
    /// run_time_ns of its BPF programs.
    bpf_ns: u64,
}

/// USER_HZ, the unit of `/proc` CPU times: 100 on every Linux architecture kubeprof runs on.
fn ticks_per_sec() -> f64 {
    100.0
}

fn proc_cpu(pid: u32) -> Cpu {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after the comm.
    let ticks = field(11) + field(12);
    let mut bpf_ns = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for e in dir.flatten() {
            let info = std::fs::read_to_string(e.path()).unwrap_or_default();
            if info.contains("prog_type:") {
                bpf_ns += info
                    .lines()
                    .find_map(|l| l.strip_prefix("run_time_ns:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Cpu { ticks, bpf_ns }
}

/// A `kB` field of `/proc/<pid>/status`: `VmHWM` (peak RSS), `RssAnon` (heap, no file pages).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Busy CPU time of the whole machine in clock ticks (everything but idle and iowait).
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return 0;
    };
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    v.iter().take(8).sum::<u64>() - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0)
}

/// `/usr/bin/time`, writing the whole run's CPU and peak RSS to a file named after `what`.
fn timed(tmp: &Path, what: &str, rate: u32) -> Command {
    let mut c = Command::new("/usr/bin/time");
    c.args(["-f", "%U %S %M", "-o"])
        .arg(tmp.join(format!("{what}-{rate}.time")));
    c
}

/// Whole run: (CPU seconds, peak RSS KiB) from `timed`'s file.
fn whole_run(tmp: &Path, what: &str, rate: u32) -> Option<(f64, u64)> {
    let text = std::fs::read_to_string(tmp.join(format!("{what}-{rate}.time"))).ok()?;
    let f: Vec<&str> = text.lines().last()?.split_whitespace().collect();
    let (u, s, m): (f64, f64, u64) = (
        f.first()?.parse().ok()?,
        f.get(1)?.parse().ok()?,
        f.get(2)?.parse().ok()?,
    );
    Some((u + s, m))
}

struct Peer {
    /// The file name `timed` writes.
    what: &'static str,
    name: String,
    child: Child,
    /// The pid whose CPU counts (perf's own process; bcc's python).
    pid: u32,
}

fn bench(secs: u64, rates: &[u32]) -> Result<()> {
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let me = std::env::current_exe()?;
    let spinners: Vec<Child> = (0..2)
        .map(|_| Command::new(&me).arg("spin").spawn())
        .collect::<std::result::Result<_, _>>()?;
    let tmp = std::env::temp_dir().join(format!("kubeprof-ebpf-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    println!(
        "load average before: {}",
        std::fs::read_to_string("/proc/loadavg")?.trim()
    );
    println!(
        "{:<24} {:>5} {:>9} {:>10} {:>10} {:>10} {:>9} {:>9} {:>12}",
        "profiler",
        "rate",
        "CPU %",
        "of which",
        "CPU %",
        "RSS MiB",
        "anon MiB",
        "samples",
        "samples per"
    );
    println!(
        "{:<24} {:>5} {:>9} {:>10} {:>10} {:>10} {:>9} {:>9} {:>12}",
        "", "Hz", "(window)", "BPF %", "whole run", "(peak)", "(window)", "", "CPU-second"
    );
    for &rate in rates {
        let total = secs + WARMUP.as_secs() + 1;
        let perf_data = tmp.join(format!("perf-{rate}.data"));
        let bcc_out = tmp.join(format!("bcc-{rate}.folded"));
        let mut peers = vec![
            {
                let child = timed(&tmp, "kubeprof", rate)
                    .arg(&me)
                    .args(["profile", &rate.to_string(), &total.to_string()])
                    .stdout(Stdio::piped())
                    .spawn()?;
                Peer {
                    name: "kubeprof-ebpf".into(),
                    what: "kubeprof",
                    pid: child.id(),
                    child,
                }
            },
            {
                // What eBPF mode costs as deployed: only the selected processes.
                let pids: Vec<String> = spinners.iter().map(|c| c.id().to_string()).collect();
                let child = timed(&tmp, "kubeprof-pids", rate)
                    .arg(&me)
                    .args([
                        "profile",
                        &rate.to_string(),
                        &total.to_string(),
                        &pids.join(","),
                    ])
                    .stdout(Stdio::piped())
                    .spawn()?;
                Peer {
                    name: "kubeprof-ebpf (2 pids)".into(),
                    what: "kubeprof-pids",
                    pid: child.id(),
                    child,
                }
            },
            {
                let child = timed(&tmp, "perf", rate)
                    .arg("perf")
                    .args(["record", "-q", "-F", &rate.to_string(), "-a", "-g", "-o"])
                    .arg(&perf_data)
                    .args(["--", "sleep", &total.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?;
                Peer {
                    name: "perf record -a -g".into(),
                    what: "perf",
                    pid: child.id(),
                    child,
                }
            },
        ];
        let bcc = ["/usr/sbin/profile-bpfcc", "/usr/share/bcc/tools/profile"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        if let Some(bcc) = bcc {
            let child = timed(&tmp, "bcc", rate)
                .arg(bcc)
                .args(["-F", &rate.to_string(), "-af", &total.to_string()])
                .stdout(std::fs::File::create(&bcc_out)?)
                .stderr(Stdio::null())
                .spawn()?;
            peers.push(Peer {
                name: "bcc profile -af".into(),
                what: "bcc",
                pid: child.id(),
                child,
            });
        }
        std::thread::sleep(WARMUP);
        // The profiler is the child of /usr/bin/time.
        for p in &mut peers {
            p.pid = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", p.pid))
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse().ok())
                .unwrap_or(p.pid);
        }
        let before: Vec<Cpu> = peers.iter().map(|p| proc_cpu(p.pid)).collect();
        let busy_before = machine_busy_ticks();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(secs));
        let after: Vec<Cpu> = peers.iter().map(|p| proc_cpu(p.pid)).collect();
        let rss: Vec<(u64, u64)> = peers
            .iter()
            .map(|p| (status_kib(p.pid, "VmHWM"), status_kib(p.pid, "RssAnon")))
            .collect();
        let wall = t0.elapsed().as_secs_f64();
        let busy_secs = machine_busy_ticks().saturating_sub(busy_before) as f64 / ticks_per_sec();
        let busy_total_secs = busy_secs * (total as f64 / wall);
        for (i, peer) in peers.iter_mut().enumerate() {
            let status = peer.child.wait()?;
            let samples: Option<u64> = match peer.name.as_str() {
                "kubeprof-ebpf" | "kubeprof-ebpf (2 pids)" => {
                    let mut out = String::new();
                    if let Some(mut s) = peer.child.stdout.take() {
                        s.read_to_string(&mut out)?;
                    }
                    eprintln!("{} @ {rate} Hz: {}", peer.name, out.trim());
                    out.split_whitespace()
                        .find_map(|f| f.strip_prefix("samples="))
                        .and_then(|v| v.parse().ok())
                }
                "perf record -a -g" => perf_samples(&perf_data),
                _ => bcc_samples(&bcc_out),
            };
            let cpu =
                after[i].ticks.saturating_sub(before[i].ticks) as f64 / ticks_per_sec() / wall
                    * 100.0;
            let bpf = after[i].bpf_ns.saturating_sub(before[i].bpf_ns) as f64 / 1e9 / wall * 100.0;
            let per_cpu_sec = samples.map(|s| s as f64 / busy_total_secs);
            // Whole run: start-up (bcc compiles its program) and exit (bcc and perf symbolise
            // then) included, BPF time not.
            let whole = whole_run(&tmp, peer.what, rate);
            println!(
                "{:<24} {:>5} {:>8.2}% {:>9.3}% {:>10} {:>10.1} {:>9.1} {:>9} {:>12}{}",
                peer.name,
                rate,
                cpu + bpf,
                bpf,
                whole.map_or("?".into(), |(c, _)| format!(
                    "{:.2}%",
                    c / total as f64 * 100.0
                )),
                rss[i].0 as f64 / 1024.0,
                rss[i].1 as f64 / 1024.0,
                samples.map_or("?".into(), |s| s.to_string()),
                per_cpu_sec.map_or("?".into(), |v| format!("{v:.1}")),
                if status.success() {
                    ""
                } else {
                    "  (exited with an error)"
                }
            );
        }
    }
    println!(
        "load average after: {}",
        std::fs::read_to_string("/proc/loadavg")?.trim()
    );
    for mut s in spinners {
        let _ = s.kill();
        let _ = s.wait();
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Samples in a perf.data file: `perf script -F comm` prints one line per sample.
fn perf_samples(data: &Path) -> Option<u64> {
    let out = Command::new("perf")
        .args(["script", "-F", "comm", "-i"])
        .arg(data)
        .output()
        .ok()?;
    Some(
        out.stdout
            .split(|&b| b == b'\n')
            .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
            .count() as u64,
    )
}

/// Samples in bcc's folded output: the last field of each line is a count.
fn bcc_samples(out: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(out).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}
