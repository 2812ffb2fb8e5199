//! The `kubeprof-scraper` command line (main.rs only calls [`main`], so tests can run the same
//! binary from another crate).
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use kubeprof_pprof::DecodeLimits;

use crate::{
    cluster::{ClusterSource, KubeSecrets, spawn_health_reporter},
    config::{Config, EMBEDDED_DEFAULT},
    credentials::{SecretSource, SecretsDir},
    discovery::{JobSource, StaticFileSource},
    fetch::Fetcher,
    flamegraph,
    metrics::Metrics,
    scrape::{Pipeline, Scheduler},
    sinks::{Fanout, RetryConfig},
    telemetry::{Telemetry, init_logging},
};
use tokio_util::sync::CancellationToken;

/// kubeprof's scraper: pulls pprof endpoints, computes deltas, relabels, forwards to sinks.
#[derive(Debug, Parser)]
#[command(name = "kubeprof-scraper", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scrape the targets of a standalone YAML file (default: the embedded example, which
    /// profiles the scraper itself and 127.0.0.1:6060 and writes to ./profiles).
    Run(RunArgs),
    /// Check a configuration file and exit (0: valid, 2: invalid).
    CheckConfig {
        /// The file.
        config: PathBuf,
    },
    /// Render a stored profile as a flame graph SVG.
    Flamegraph {
        /// A pprof file (gzip or raw), e.g. profiles/<service>/process_cpu/<ms>.pb.gz.
        profile: PathBuf,
        /// Where to write the SVG (default: the profile's path with .svg).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Sample type to draw (default: cpu, inuse_space, delay or the last one).
        #[arg(long)]
        sample_type: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Standalone configuration (YAML). Reloaded when it changes or on SIGHUP.
    #[arg(long, env = "KUBEPROF_CONFIG", conflicts_with = "cluster")]
    config: Option<PathBuf>,
    /// Cluster mode: run the jobs the operator publishes for this node (`--node`), read
    /// referenced Secrets from the API, report scrape health back.
    #[arg(long)]
    cluster: bool,
    /// Namespace of the operator's published jobs (cluster mode).
    #[arg(long, env = "KUBEPROF_NAMESPACE", default_value = "kubeprof")]
    namespace: String,
    /// This scraper's node (cluster mode; the downward API's spec.nodeName). Without it, the
    /// scraper runs the jobs of pods that have no node.
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// How often scrape health is checked and, when changed, reported (cluster mode).
    #[arg(long, env = "KUBEPROF_HEALTH_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    health_interval: Duration,
    /// Directory of Secrets referenced by sinks, as `<dir>/<namespace>/<name>/<key>`.
    #[arg(long, env = "KUBEPROF_SECRETS_DIR")]
    secrets_dir: Option<PathBuf>,
    /// Address of /metrics, /healthz, /readyz and /debug/pprof/*.
    #[arg(long, env = "KUBEPROF_LISTEN", default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
    /// Log format: text or json.
    #[arg(long, env = "KUBEPROF_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// Runs the scraper; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::CheckConfig { config } => match Config::load(&config.to_string_lossy()) {
            Ok(c) => {
                let set = c.job_set();
                println!(
                    "{}: valid ({} jobs, {} sinks)",
                    config.display(),
                    set.jobs.len(),
                    set.sinks.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "kubeprof-scraper: invalid configuration {}: {e}",
                    config.display()
                );
                ExitCode::from(2)
            }
        },
        Command::Flamegraph {
            profile,
            output,
            sample_type,
        } => {
            let output = output.unwrap_or_else(|| {
                let name = profile
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                profile.with_file_name(format!(
                    "{}.svg",
                    name.trim_end_matches(".gz").trim_end_matches(".pb")
                ))
            });
            let result = std::fs::read(&profile)
                .map_err(|e| format!("cannot read {}: {e}", profile.display()))
                .and_then(|body| {
                    let mut svg = Vec::new();
                    flamegraph::render(&body, sample_type.as_deref(), &mut svg)
                        .map_err(|e| e.to_string())?;
                    std::fs::write(&output, svg)
                        .map_err(|e| format!("cannot write {}: {e}", output.display()))
                });
            match result {
                Ok(()) => {
                    println!("wrote {}", output.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kubeprof-scraper: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    init_logging(&args.log_format);
    let config = match &args.config {
        Some(path) => Config::load(&path.to_string_lossy()),
        None => Config::parse(EMBEDDED_DEFAULT),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            let name = args
                .config
                .as_ref()
                .map_or("<embedded default>".into(), |p| p.display().to_string());
            eprintln!("kubeprof-scraper: invalid configuration {name}: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubeprof-scraper: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(args, config))
}

async fn serve(args: RunArgs, config: Config) -> ExitCode {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let telemetry = Telemetry::new(registry);
    let shutdown = CancellationToken::new();
    if !telemetry
        .serve_or_report(args.listen, shutdown.clone(), "kubeprof-scraper")
        .await
    {
        return ExitCode::from(1);
    }
    let client = if args.cluster {
        match kube::Client::try_default().await {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("kubeprof-scraper: cannot configure the Kubernetes client: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    let kube_secrets = client.clone().map(|c| Arc::new(KubeSecrets::new(c)));
    let secrets: Arc<dyn SecretSource> = match &kube_secrets {
        Some(k) => k.clone(),
        None => Arc::new(SecretsDir(args.secrets_dir.clone())),
    };
    // In cluster mode the jobs and sinks come from the shard; the file's scrape settings apply.
    let set = if args.cluster {
        Default::default()
    } else {
        config.job_set()
    };
    let fanout = match Fanout::from_specs(
        &set.sinks,
        secrets.as_ref(),
        RetryConfig::default(),
        &metrics,
    ) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kubeprof-scraper: {e}");
            return ExitCode::from(2);
        }
    };
    let limits = DecodeLimits {
        max_decompressed_bytes: usize::try_from(config.scrape.max_decompressed_bytes)
            .unwrap_or(usize::MAX),
    };
    let pipeline = Arc::new(Pipeline::new(
        Fetcher::new(secrets.clone()),
        fanout,
        metrics.clone(),
        limits,
        config.scrape.max_concurrent,
    ));
    let mut scheduler = Scheduler::new(pipeline.clone(), shutdown.child_token());
    let source: Box<dyn JobSource> = match (&client, &kube_secrets, &args.config) {
        (Some(client), Some(kube_secrets), _) => Box::new(ClusterSource::start(
            client.clone(),
            &args.namespace,
            args.node.as_deref(),
            kube_secrets.clone(),
            metrics.clone(),
            shutdown.clone(),
        )),
        (_, _, Some(path)) => Box::new(StaticFileSource::start(
            path.clone(),
            set,
            Duration::from_secs(2),
            metrics.clone(),
            shutdown.clone(),
        )),
        _ => Box::new(StaticFileSource::fixed(set)),
    };
    let mut updates = source.subscribe();
    let mut sinks = updates.borrow().sinks.clone();
    scheduler.apply(updates.borrow_and_update().jobs.clone());
    telemetry.set_ready(true);
    let reporter = client.as_ref().map(|c| {
        spawn_health_reporter(
            c.clone(),
            &args.namespace,
            args.node.clone(),
            pipeline.clone(),
            source.subscribe(),
            args.health_interval,
            shutdown.child_token(),
        )
    });
    if args.cluster {
        tracing::info!(namespace = %args.namespace, node = ?args.node, "cluster mode: waiting for this node's jobs");
    } else {
        tracing::info!(
            jobs = scheduler.len(),
            config = %args.config.as_ref().map_or("<embedded default>".into(), |p| p.display().to_string()),
            "scraping"
        );
    }

    let (mut term, mut int) = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("kubeprof-scraper: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
                let set = updates.borrow_and_update().clone();
                if set.sinks != sinks {
                    match Fanout::from_specs(&set.sinks, secrets.as_ref(), RetryConfig::default(), &metrics) {
                        Ok(new) => {
                            let old = pipeline.replace_fanout(new);
                            sinks = set.sinks.clone();
                            tokio::spawn(async move { old.shutdown(Duration::from_secs(10)).await });
                        }
                        Err(e) => tracing::error!(error = %e, "new sinks are unusable; keeping the previous ones"),
                    }
                }
                scheduler.apply(set.jobs.clone());
            }
        }
    }
    tracing::info!("shutting down: stopping scrapes, flushing sinks");
    telemetry.set_ready(false);
    scheduler.stop().await;
    pipeline.fanout().shutdown(Duration::from_secs(10)).await;
    shutdown.cancel();
    if let Some(r) = reporter {
        let _ = r.await;
    }
    ExitCode::SUCCESS
}
