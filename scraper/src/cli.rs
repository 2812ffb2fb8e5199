//! The `kubeprof-scraper` command line: arguments only; [`crate::app`] runs them.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

/// kubeprof's scraper: pulls pprof endpoints, computes deltas, relabels, forwards to sinks.
#[derive(Debug, Parser)]
#[command(name = "kubeprof-scraper", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Scrape the targets of a standalone YAML file (default: the embedded example, which
    /// profiles the scraper itself and 127.0.0.1:6060 and writes to ./profiles).
    Run(RunArgs),
    /// Check a configuration file and exit (0: valid, 2: invalid).
    CheckConfig {
        /// The file.
        config: PathBuf,
        /// Directory of Secrets referenced by sinks (as for `run`); every sink is built.
        #[arg(long, env = "KUBEPROF_SECRETS_DIR")]
        secrets_dir: Option<PathBuf>,
    },
    /// Render stored profiles as a flame graph SVG: one, several merged, or the difference
    /// from `--base` profiles. An empty profile renders an SVG that says so.
    Flamegraph {
        /// pprof files (gzip or raw), e.g. profiles/<service>/process_cpu/<ms>.pb.gz; several
        /// are merged.
        #[arg(required = true)]
        profiles: Vec<PathBuf>,
        /// Where to write the SVG (default: the first profile's path with .svg).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Sample type to draw (default: cpu, inuse_space, delay or the last one).
        #[arg(long)]
        sample_type: Option<String>,
        /// Draw the difference from these profiles (merged) to PROFILES: red frames take more
        /// in PROFILES, blue ones less. Give it after the profiles, or once per file.
        #[arg(long, num_args = 1.., value_name = "FILE")]
        base: Vec<PathBuf>,
        /// With --base, compare absolute values instead of scaling the base to the same total.
        #[arg(long)]
        no_normalize: bool,
    },
}

/// One of the roles `run --sources` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Role {
    /// Scrape the pull jobs.
    Pull,
    /// Run the eBPF profiler for the eBPF section.
    Ebpf,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Standalone configuration (YAML). Reloaded when it changes or on SIGHUP.
    #[arg(long, env = "KUBEPROF_CONFIG", conflicts_with = "cluster")]
    pub config: Option<PathBuf>,
    /// Cluster mode: run the jobs the operator publishes for this node (`--node`), read
    /// referenced Secrets from the API, report scrape health back.
    #[arg(long)]
    pub cluster: bool,
    /// Namespace of the operator's published jobs (cluster mode).
    #[arg(long, env = "KUBEPROF_NAMESPACE", default_value = "kubeprof")]
    pub namespace: String,
    /// This scraper's node (cluster mode; the downward API's spec.nodeName). Without it, the
    /// scraper runs the jobs of pods that have no node.
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// How often scrape health is checked and, when changed, reported (cluster mode).
    #[arg(long, env = "KUBEPROF_HEALTH_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,
    /// Directory of Secrets referenced by sinks, as `<dir>/<namespace>/<name>/<key>`.
    #[arg(long, env = "KUBEPROF_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Address of /metrics, /healthz, /readyz and /debug/pprof/*.
    #[arg(long, env = "KUBEPROF_LISTEN", default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// Serve `/targets` and the profile browser `/ui` on the --listen port (read-only).
    #[arg(long, env = "KUBEPROF_UI", default_value_t = true, action = clap::ArgAction::Set)]
    pub ui: bool,
    /// What this process runs, comma-separated: `pull` (the pull jobs) and `ebpf` (the eBPF
    /// section of the node's shard or of the file). Both by default. In a cluster the chart runs
    /// them apart: the hardened scraper DaemonSet with `pull`, the privileged eBPF DaemonSet
    /// with `ebpf` (it reports in its own key of the node's health report, `ebpf.json`). A
    /// `pull` scraper whose shard asks for eBPF reports that no profiler runs there.
    #[arg(
        long,
        env = "KUBEPROF_SOURCES",
        value_delimiter = ',',
        default_value = "pull,ebpf",
        required = false
    )]
    pub sources: Vec<Role>,
    /// The host's /proc, for the eBPF profiler (with `hostPID: true`, /proc itself).
    #[arg(long, env = "KUBEPROF_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,
    /// The host's cgroup v2 mount, for the eBPF profiler (default: /sys/fs/cgroup, or
    /// /sys/fs/cgroup/unified on a hybrid cgroup v1 node).
    #[arg(long, env = "KUBEPROF_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "KUBEPROF_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}
