//! Load harness: serves N fake Go services on 127.0.0.0/8 (one loopback address each, like
//! pods) from real captured Go profiles, runs the real `kubeprof-scraper` binary against them
//! with a file sink, and prints the scraper's CPU use, memory and scrape counts.
//!
//! ```sh
//! cargo build --release -p kubeprof-scraper
//! target/release/kubeprof-loadtest --targets 1000 --interval 15s --duration 120s
//! ```
//! Everything listens on loopback and the run stops by itself after `--duration`.
//!
//! `--hostile N` adds N hostile targets (huge error bodies, gzip bombs, a million mutex series,
//! slowloris, ...: [`hostile::CLASSES`]) on 127.2.0.0/16, scraped into their own sink, and
//! prints the scraper's peak RSS, the good targets' missed scrapes (gaps between their requests
//! longer than an interval) and the scrape outcomes and rejection reasons.

mod hostile;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use axum::{
    Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use clap::Parser;

/// Load harness for kubeprof-scraper.
#[derive(Debug, Parser)]
struct Args {
    /// Fake targets (one loopback address each: 127.1.0.1, 127.1.0.2, ...).
    #[arg(long, default_value_t = 1000)]
    targets: u32,
    /// Scrape interval.
    #[arg(long, default_value = "15s")]
    interval: String,
    /// How long to measure, after a warm-up of one interval.
    #[arg(long, default_value = "120s")]
    duration: String,
    /// The scraper binary (default: next to this one).
    #[arg(long)]
    scraper: Option<PathBuf>,
    /// Also take a 10 s CPU profile of the scraper mid-run and print its hottest functions.
    /// Symbolizing it costs the scraper a few hundred MiB of RSS, so the memory figure of such
    /// a run is not representative.
    #[arg(long)]
    self_profile: bool,
    /// Port every fake target listens on.
    #[arg(long, default_value_t = 6060)]
    port: u16,
    /// Hostile targets beside the good ones (127.2.0.1, 127.2.0.2, ...), each of one class in
    /// turn.
    #[arg(long, default_value_t = 0)]
    hostile: u32,
    /// The hostile classes to take in turn (comma-separated; default all), to see what one
    /// class costs the scraper.
    #[arg(long, value_delimiter = ',')]
    hostile_classes: Vec<String>,
}

const CPU: &[u8] = include_bytes!("../../../tests/fixtures/pprof-go/cpu.pb.gz");
const ALLOCS: [&[u8]; 2] = [
    include_bytes!("../../../tests/fixtures/pprof-go/allocs.pb.gz"),
    include_bytes!("../../../tests/fixtures/pprof-go/allocs-2.pb.gz"),
];
const MUTEX: [&[u8]; 2] = [
    include_bytes!("../../../tests/fixtures/pprof-go/mutex.pb.gz"),
    include_bytes!("../../../tests/fixtures/pprof-go/mutex-2.pb.gz"),
];
const BLOCK: [&[u8]; 2] = [
    include_bytes!("../../../tests/fixtures/pprof-go/block.pb.gz"),
    include_bytes!("../../../tests/fixtures/pprof-go/block-2.pb.gz"),
];
const GOROUTINE: &[u8] = include_bytes!("../../../tests/fixtures/pprof-go/goroutine.pb.gz");

/// What the good targets saw.
#[derive(Default)]
struct Served {
    requests: AtomicU64,
    /// Set once the warm-up is over: gaps are counted from then on.
    measuring: std::sync::atomic::AtomicBool,
    /// Intervals without a request, over every good target, by type.
    missed: [AtomicU64; 5],
    /// The longest gap between two requests of one target, by type, in ms.
    max_gap_ms: [AtomicU64; 5],
    interval: std::sync::OnceLock<Duration>,
}

impl Served {
    /// Counts a request of one target's type whose previous one came at `last`.
    fn request(&self, last: &std::sync::Mutex<Option<Instant>>, kind: usize) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let previous = last.lock().unwrap_or_else(|e| e.into_inner()).replace(now);
        let (Some(previous), Some(interval)) = (previous, self.interval.get()) else {
            return;
        };
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        let gap = now - previous;
        self.max_gap_ms[kind].fetch_max(gap.as_millis() as u64, Ordering::Relaxed);
        let intervals = (gap.as_secs_f64() / interval.as_secs_f64()).round() as u64;
        self.missed[kind].fetch_add(intervals.saturating_sub(1), Ordering::Relaxed);
    }
}

/// One fake service: counts its own requests per type, so each starts with its first capture.
#[derive(Default)]
struct Target {
    served: Arc<Served>,
    cumulative: [AtomicU64; 3],
    /// The last request of each type (cpu, allocs, mutex, block, goroutine).
    last: [std::sync::Mutex<Option<Instant>>; 5],
    /// The CPU profile served, covering the interval asked.
    cpu: bytes::Bytes,
}

#[derive(serde::Deserialize)]
struct Params {
    seconds: Option<u64>,
}

async fn profile(
    State(t): State<Arc<Target>>,
    Path(name): Path<String>,
    Query(p): Query<Params>,
) -> Response {
    if let Some(i) = ["profile", "allocs", "mutex", "block", "goroutine"]
        .iter()
        .position(|n| *n == name)
    {
        t.served.request(&t.last[i], i);
    }
    let nth = |i: usize| usize::from(t.cumulative[i].fetch_add(1, Ordering::Relaxed) > 0);
    let body: &'static [u8] = match name.as_str() {
        "profile" => {
            // Like Go: the answer comes after the sampling period.
            tokio::time::sleep(Duration::from_secs(p.seconds.unwrap_or(30).min(60))).await;
            return t.cpu.clone().into_response();
        }
        // The first capture, then the later one: a real delta, then zero deltas.
        "allocs" => ALLOCS[nth(0)],
        "mutex" => MUTEX[nth(1)],
        "block" => BLOCK[nth(2)],
        "goroutine" => GOROUTINE,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    body.into_response()
}

fn target_ip(i: u32) -> Ipv4Addr {
    let n = i + 1;
    Ipv4Addr::new(127, 1, (n >> 8) as u8, (n & 0xff) as u8)
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/pid/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    let ticks = 100.0; // USER_HZ on Linux
    Ok((utime + stime) / ticks)
}

/// (VmRSS, VmHWM) of `pid`, in MiB.
fn memory_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Sums of the series starting with `prefix`, by the value of their label `key`.
fn by_label(text: &str, prefix: &str, key: &str) -> Vec<(String, f64)> {
    let mut sums = std::collections::BTreeMap::<String, f64>::new();
    for line in text.lines().filter(|l| l.starts_with(prefix)) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let needle = format!("{key}=\"");
        let label = series
            .split_once(&needle)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or("", |(v, _)| v);
        *sums.entry(label.to_owned()).or_default() += v.parse::<f64>().unwrap_or(0.0);
    }
    sums.into_iter().collect()
}

/// Kills the scraper when the harness ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kubeprof_scraper::install_default_provider();
    let args = Args::parse();
    let interval: kubeprof_crds::Duration = args.interval.parse()?;
    let duration: kubeprof_crds::Duration = args.duration.parse()?;
    let scraper = match args.scraper {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("kubeprof-scraper"),
    };
    if !scraper.exists() {
        bail!(
            "{} not found: cargo build --release -p kubeprof-scraper",
            scraper.display()
        );
    }

    let served = Arc::new(Served::default());
    let _ = served.interval.set(interval.std());
    // The captured CPU profile covers 5 s; the scraper asks for the interval.
    let cpu_body: bytes::Bytes = {
        let mut p = kubeprof_pprof::decode(CPU, &Default::default())?;
        p.duration_nanos = i64::try_from(interval.std().as_nanos()).unwrap_or(i64::MAX);
        kubeprof_pprof::encode_gzip(&p).into()
    };
    let mut addresses = Vec::new();
    for i in 0..args.targets {
        let addr = SocketAddr::new(IpAddr::V4(target_ip(i)), args.port);
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("binding {addr} (loopback addresses beyond 127.0.0.1 need Linux)")
        })?;
        let app = Router::new()
            .route("/debug/pprof/{name}", get(profile))
            .with_state(Arc::new(Target {
                served: served.clone(),
                cpu: cpu_body.clone(),
                ..Default::default()
            }));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        addresses.push(addr.to_string());
    }

    let mut hostile_addresses = Vec::new();
    let classes: Vec<usize> = if args.hostile_classes.is_empty() {
        (0..hostile::CLASSES.len()).collect()
    } else {
        args.hostile_classes
            .iter()
            .map(|c| {
                hostile::CLASSES
                    .iter()
                    .position(|k| k == c)
                    .with_context(|| {
                        format!(
                            "no hostile class {c:?}; the classes: {}",
                            hostile::CLASSES.join(", ")
                        )
                    })
            })
            .collect::<anyhow::Result<_>>()?
    };
    if args.hostile > 0 {
        let bodies = Arc::new(hostile::Bodies::build(CPU, GOROUTINE)?);
        for i in 0..args.hostile {
            let n = i + 1;
            let ip = Ipv4Addr::new(127, 2, (n >> 8) as u8, (n & 0xff) as u8);
            let addr = SocketAddr::new(IpAddr::V4(ip), args.port);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let app = Router::new()
                .route("/debug/pprof/{name}", get(hostile::serve))
                .with_state(Arc::new(hostile::Hostile {
                    class: classes[i as usize % classes.len()],
                    bodies: bodies.clone(),
                    requests: AtomicU64::new(0),
                }));
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            hostile_addresses.push(addr.to_string());
        }
    }

    let dir = tempfile::tempdir()?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = dir.path().join("scraper.yaml");
    let profiles = dir.path().join("profiles");
    std::fs::write(
        &config,
        format!(
            "targets:\n  - name: load\n    addresses: {addresses:?}\n    interval: {interval}\n    scrapeTimeout: 10s\n    sinks: [local]\n{}sinks:\n  - name: local\n    file: {{directory: {}, retentionBytes: 268435456}}\n  - name: quarantine\n    file: {{directory: {}-hostile, retentionBytes: 268435456}}\n",
            if hostile_addresses.is_empty() {
                String::new()
            } else {
                format!(
                    "  - name: hostile\n    addresses: {hostile_addresses:?}\n    interval: {interval}\n    scrapeTimeout: 10s\n    sinks: [quarantine]\n"
                )
            },
            profiles.display(),
            profiles.display()
        ),
    )?;
    let expected_per_interval = u64::from(args.targets) * 5;
    println!(
        "loadtest: {} targets x 5 types every {interval} ({:.0} scrapes/s), measuring {duration} after one interval of warm-up",
        args.targets,
        expected_per_interval as f64 / interval.std().as_secs_f64()
    );
    let child = Command::new(&scraper)
        .args(["run", "--config"])
        .arg(&config)
        .args(["--listen", &listen.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", scraper.display()))?;
    let mut child = KillOnDrop(child);
    let pid = child.0.id();

    tokio::time::sleep(interval.std() + Duration::from_secs(2)).await;
    let client = reqwest::Client::new();
    let scrape_metrics = || async {
        let text = client
            .get(format!("http://{listen}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        anyhow::Ok(text)
    };
    let before = scrape_metrics().await?;
    served.measuring.store(true, Ordering::Relaxed);
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    let mut peak_rss: f64 = 0.0;
    // The scraper profiles itself: a 10 s CPU profile from the middle of the run says where
    // its time goes.
    let self_profile = args.self_profile.then(|| {
        let client = client.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            client
                .get(format!("http://{listen}/debug/pprof/profile?seconds=10"))
                .send()
                .await?
                .bytes()
                .await
        })
    });
    while t0.elapsed() < duration.std() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok((rss, _)) = memory_mib(pid) {
            peak_rss = peak_rss.max(rss);
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            bail!("the scraper exited early: {status}");
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu0;
    let (rss, hwm) = memory_mib(pid)?;
    let after = scrape_metrics().await?;
    let delta = |prefix: &str| metric(&after, prefix) - metric(&before, prefix);
    let done = delta("kubeprof_scrapes_total{");
    let ok = delta("kubeprof_scrapes_total{type=\"process_cpu\",outcome=\"success\"}")
        + delta("kubeprof_scrapes_total{type=\"memory\",outcome=\"success\"}")
        + delta("kubeprof_scrapes_total{type=\"goroutine\",outcome=\"success\"}")
        + delta("kubeprof_scrapes_total{type=\"mutex\",outcome=\"success\"}")
        + delta("kubeprof_scrapes_total{type=\"block\",outcome=\"success\"}");
    let missed = metric(&after, "kubeprof_missed_scrapes_total");
    let expected = expected_per_interval as f64 * wall / interval.std().as_secs_f64();
    let dropped = metric(&after, "kubeprof_sink_dropped_profiles_total").max(0.0);
    let sent = delta("kubeprof_sink_sent_profiles_total");
    let good_sent = delta("kubeprof_sink_sent_profiles_total{sink=\"local\"");

    drop(child);

    println!("---------------------------------------------------------------");
    println!(
        "targets                 {} x 5 profile types, interval {interval}",
        args.targets
    );
    println!("measured                {wall:.0} s");
    println!(
        "scraper CPU             {:.3} cores ({cpu:.1} s CPU in {wall:.0} s)",
        cpu / wall
    );
    println!(
        "scraper RSS             {rss:.1} MiB now, {peak_rss:.1} MiB peak while measured, {hwm:.1} MiB high-water mark"
    );
    println!(
        "scrapes                 {done:.0} done, ~{expected:.0} due, {ok:.0} successful or baseline-free"
    );
    println!("missed scrapes          {missed:.0} (whole run)");
    println!("profiles written        {sent:.0}; dropped {dropped:.0} (whole run)");
    println!(
        "fake target requests    {}",
        served.requests.load(Ordering::Relaxed)
    );
    if args.hostile > 0 {
        println!(
            "hostile targets         {} ({} classes: {})",
            args.hostile,
            hostile::CLASSES.len(),
            hostile::CLASSES.join(", ")
        );
        let missed: Vec<u64> = served
            .missed
            .iter()
            .map(|m| m.load(Ordering::Relaxed))
            .collect();
        println!(
            "good targets            {:.0} profiles delivered while measured; {} missed scrapes (intervals without a request)",
            good_sent,
            missed.iter().sum::<u64>()
        );
        for (i, kind) in ["cpu", "allocs", "mutex", "block", "goroutine"]
            .iter()
            .enumerate()
        {
            println!(
                "  {kind:<10} {} missed, longest gap {:.1} s",
                missed[i],
                served.max_gap_ms[i].load(Ordering::Relaxed) as f64 / 1000.0
            );
        }
        println!("scrape outcomes (whole run, all targets):");
        for (label, n) in by_label(&after, "kubeprof_scrapes_total{", "outcome") {
            println!("  {n:8.0}  {label}");
        }
        println!("rejection reasons (whole run):");
        for (label, n) in by_label(&after, "kubeprof_scrape_rejections_total{", "reason") {
            println!("  {n:8.0}  {label}");
        }
        for name in [
            "kubeprof_short_profiles_total",
            "kubeprof_delta_baselines_total",
            "kubeprof_job_panics_total",
        ] {
            println!("{name:<40}{:.0}", metric(&after, name));
        }
    }
    let body = match self_profile {
        Some(task) => task.await.ok().and_then(Result::ok),
        None => None,
    };
    if let Some(body) = body {
        let out = PathBuf::from("loadtest-scraper-cpu.pb.gz");
        if std::fs::write(&out, &body).is_ok() {
            println!(
                "scraper self-profile    {} (go tool pprof -top, or kubeprof-scraper flamegraph)",
                out.display()
            );
        }
        if let Ok(profile) = kubeprof_pprof::decode(&body, &Default::default())
            && let Ok((_, folded)) = kubeprof_scraper::flamegraph::fold(&profile, None)
        {
            let mut leaf: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
            let mut total = 0;
            for line in &folded {
                if let Some((stack, v)) = line.rsplit_once(' ') {
                    let v: i64 = v.parse().unwrap_or(0);
                    total += v;
                    *leaf
                        .entry(stack.rsplit(';').next().unwrap_or("").to_owned())
                        .or_default() += v;
                }
            }
            let mut top: Vec<_> = leaf.into_iter().collect();
            top.sort_by_key(|(_, v)| std::cmp::Reverse(*v));
            println!("hottest leaf functions of the scraper (self time):");
            for (f, v) in top.iter().take(10) {
                let name: String = f.chars().take(100).collect();
                println!("  {:5.1}%  {name}", 100.0 * *v as f64 / total.max(1) as f64);
            }
        }
    }
    println!("---------------------------------------------------------------");
    Ok(())
}
