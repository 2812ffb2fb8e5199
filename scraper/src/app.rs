//! The assembly: what `kubeprof-scraper` runs. [`main`] parses the command line; `run` builds
//! telemetry, the job source, the outputs (the sinks every source feeds) and the pull loop, and
//! wires them together until SIGTERM.

mod commands;

use std::{path::Path, process::ExitCode, sync::Arc, time::Duration};

use clap::Parser as _;
use kubeprof_pprof::DecodeLimits;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    cli::{Cli, Command, Role, RunArgs},
    config::{Config, ConfigError, EMBEDDED_DEFAULT},
    credentials::{SecretSource, SecretsDir},
    metrics::Metrics,
    outputs::{Outputs, OutputsHandle},
    pull::{Fetcher, Pipeline, Scheduler},
    sinks::{RetryConfig, SinkBuildError},
    sources::{
        ClusterSource, EbpfSource, FileSource, JobSet, JobSource, KubeSecrets, Observed, Roots,
        spawn_ebpf_reporter, spawn_health_reporter,
    },
    telemetry::{Telemetry, init_logging},
    ui::{UiState, live::LiveTargets},
};

const PROGRAM: &str = "kubeprof-scraper";

/// How long the sinks may take to send what they hold at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// How often the standalone file is checked for changes.
const FILE_POLL: Duration = Duration::from_secs(2);

/// Runs the scraper as its command line says; the process's exit code.
pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::CheckConfig {
            config,
            secrets_dir,
        } => commands::check_config(&config, secrets_dir),
        Command::Flamegraph {
            profiles,
            output,
            sample_type,
            base,
            no_normalize,
        } => commands::flamegraph(commands::FlamegraphArgs {
            profiles,
            base,
            output,
            sample_type,
            normalize: !no_normalize,
        }),
    }
}

/// Why the scraper could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// The standalone file (or the embedded default) is not valid.
    #[error("invalid configuration {name}: {source}")]
    Config {
        /// The file.
        name: String,
        /// What is wrong.
        #[source]
        source: ConfigError,
    },
    /// A sink cannot be built.
    #[error(transparent)]
    Sinks(#[from] SinkBuildError),
    /// The telemetry endpoints cannot listen (already reported).
    #[error("the telemetry endpoints cannot listen")]
    Telemetry,
    /// No async runtime.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// No Kubernetes client in cluster mode.
    #[error("cannot configure the Kubernetes client: {0}")]
    Kube(#[source] kube::Error),
    /// The eBPF source's thread could not start.
    #[error("cannot start the eBPF thread: {0}")]
    Thread(#[source] std::io::Error),
    /// No signal handlers.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

impl StartError {
    /// Prints the error (unless already reported) and returns the exit code: 2 for a
    /// configuration that cannot work, 1 for anything else.
    fn report(&self) -> ExitCode {
        if !matches!(self, Self::Telemetry) {
            eprintln!("{PROGRAM}: {self}");
        }
        match self {
            Self::Config { .. } | Self::Sinks(_) => ExitCode::from(2),
            _ => ExitCode::from(1),
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    init_logging(&args.log_format);
    let started = load_config(args.config.as_deref()).and_then(|config| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?
            .block_on(serve(args, config))
    });
    match started {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}

/// The file's name in messages.
fn config_name(path: Option<&Path>) -> String {
    path.map_or("<embedded default>".into(), |p| p.display().to_string())
}

fn load_config(path: Option<&Path>) -> Result<Config, StartError> {
    match path {
        Some(path) => Config::load(&path.to_string_lossy()),
        None => Config::parse(EMBEDDED_DEFAULT),
    }
    .map_err(|source| StartError::Config {
        name: config_name(path),
        source,
    })
}

/// What cluster mode adds: the API client and the Secrets read through it.
struct Cluster {
    client: kube::Client,
    secrets: Arc<KubeSecrets>,
}

async fn serve(args: RunArgs, config: Config) -> Result<(), StartError> {
    let shutdown = CancellationToken::new();
    // The pages serve from the start; they show the pull loop once it exists.
    let ui = UiState::default();
    let routes = args.ui.then(|| crate::ui::router(ui.clone()));
    let (telemetry, metrics) = start_telemetry(&args, &shutdown, routes).await?;
    let cluster = connect(&args).await?;
    let secrets: Arc<dyn SecretSource> = match &cluster {
        Some(c) => c.secrets.clone(),
        None => Arc::new(SecretsDir(args.secrets_dir.clone())),
    };
    if cluster.is_none() {
        // The check `check-config` and a reload make, so all three accept the same files.
        config
            .check_resources(secrets.as_ref())
            .map_err(|source| StartError::Config {
                name: config_name(args.config.as_deref()),
                source,
            })?;
    }
    let source = job_source(&args, &config, cluster.as_ref(), &metrics, &shutdown);
    let mut jobs = source.subscribe();
    let initial = jobs.borrow_and_update().clone();
    let mut outputs = Outputs::start(
        &initial.sinks,
        secrets.clone(),
        RetryConfig::default(),
        &metrics,
    )?;
    let pipeline = pull_loop(&config, secrets, outputs.handle(), &metrics);
    let pull = args.sources.contains(&Role::Pull);
    // Idle (no BPF program) until a job set carries an eBPF plan; not started at all without
    // the `ebpf` role.
    let ebpf = if args.sources.contains(&Role::Ebpf) {
        Some(
            EbpfSource::start(
                source.subscribe(),
                outputs.handle(),
                metrics.clone(),
                Roots {
                    proc: args.proc_root.clone(),
                    cgroup: args
                        .cgroup_root
                        .clone()
                        .unwrap_or_else(|| Roots::host().cgroup),
                },
            )
            .map_err(StartError::Thread)?,
        )
    } else {
        None
    };
    let mut scheduler = Scheduler::new(pipeline.clone(), shutdown.child_token());
    scheduler.apply(pulled(&initial, pull));
    ui.set_source(Arc::new(LiveTargets::new(
        pipeline.clone(),
        source.subscribe(),
        metrics.clone(),
        mode(&args),
    )));
    telemetry.set_ready(true);
    // A scraper that pulls writes the node's report (with the eBPF state when it runs eBPF
    // too); an eBPF-only one writes only its own key of it.
    let reporter = cluster.map(|c| match (pull, &ebpf) {
        (false, Some(ebpf)) => spawn_ebpf_reporter(
            c.client,
            &args.namespace,
            args.node.clone(),
            ebpf.status(),
            args.health_interval,
            shutdown.child_token(),
        ),
        _ => spawn_health_reporter(
            c.client,
            &args.namespace,
            args.node.clone(),
            Observed {
                pipeline,
                jobs: source.subscribe(),
                ebpf: ebpf.as_ref().map(EbpfSource::status),
            },
            args.health_interval,
            shutdown.child_token(),
        ),
    });
    announce(&args, &scheduler);

    follow(jobs, &mut outputs, &mut scheduler, pull).await?;

    tracing::info!("shutting down: stopping scrapes, flushing sinks");
    telemetry.set_ready(false);
    scheduler.stop().await;
    if let Some(ebpf) = ebpf {
        ebpf.stop().await;
    }
    outputs.shutdown(DRAIN).await;
    shutdown.cancel();
    if let Some(r) = reporter {
        let _ = r.await;
    }
    Ok(())
}

/// The metrics, and the endpoints serving them (plus health and self-profiling).
async fn start_telemetry(
    args: &RunArgs,
    shutdown: &CancellationToken,
    routes: Option<axum::Router>,
) -> Result<(Telemetry, Metrics), StartError> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let mut telemetry = Telemetry::new(registry);
    if let Some(routes) = routes {
        telemetry = telemetry.with_routes(routes);
    }
    if !telemetry
        .serve_or_report(args.listen, shutdown.clone(), PROGRAM)
        .await
    {
        return Err(StartError::Telemetry);
    }
    Ok((telemetry, metrics))
}

/// How the scraper runs, as `/targets` says on top.
fn mode(args: &RunArgs) -> String {
    match (&args.config, args.cluster) {
        (_, true) => format!(
            "cluster mode, node {}",
            args.node.as_deref().unwrap_or("<none>")
        ),
        (Some(path), false) => format!("standalone, {}", path.display()),
        (None, false) => "standalone, the embedded default configuration".into(),
    }
}

/// The API client and Secret cache in cluster mode; nothing standalone.
async fn connect(args: &RunArgs) -> Result<Option<Cluster>, StartError> {
    if !args.cluster {
        return Ok(None);
    }
    let client = kube::Client::try_default()
        .await
        .map_err(StartError::Kube)?;
    Ok(Some(Cluster {
        secrets: Arc::new(KubeSecrets::new(client.clone())),
        client,
    }))
}

/// The node's shard in cluster mode, else the standalone file (watched) or the embedded
/// default (fixed). In cluster mode the file's scrape settings still apply.
fn job_source(
    args: &RunArgs,
    config: &Config,
    cluster: Option<&Cluster>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Box<dyn JobSource> {
    match (cluster, &args.config) {
        (Some(cluster), _) => Box::new(ClusterSource::start(
            cluster.client.clone(),
            &args.namespace,
            args.node.as_deref(),
            args.sources.contains(&Role::Pull),
            cluster.secrets.clone(),
            metrics.clone(),
            shutdown.clone(),
        )),
        (None, Some(path)) => Box::new(FileSource::start(
            path.clone(),
            config.job_set(),
            FILE_POLL,
            Arc::new(SecretsDir(args.secrets_dir.clone())),
            metrics.clone(),
            shutdown.clone(),
        )),
        (None, None) => Box::new(FileSource::fixed(config.job_set())),
    }
}

/// The pull loop's shared state, sending to `outputs`.
fn pull_loop(
    config: &Config,
    secrets: Arc<dyn SecretSource>,
    outputs: OutputsHandle,
    metrics: &Metrics,
) -> Arc<Pipeline> {
    let limits = DecodeLimits {
        max_decompressed_bytes: usize::try_from(config.scrape.max_decompressed_bytes)
            .unwrap_or(usize::MAX),
        ..DecodeLimits::default()
    };
    Arc::new(
        Pipeline::new(
            Fetcher::new(secrets),
            outputs,
            metrics.clone(),
            limits,
            config.scrape.max_concurrent,
        )
        .with_budgets(
            config.scrape.max_decode_bytes,
            // Two of the largest bodies at once: a hostile target's body waits for its share.
            config.scrape.max_profile_bytes.saturating_mul(2),
        ),
    )
}

fn announce(args: &RunArgs, scheduler: &Scheduler) {
    if args.cluster {
        tracing::info!(namespace = %args.namespace, node = ?args.node, "cluster mode: waiting for this node's jobs");
    } else {
        tracing::info!(
            jobs = scheduler.len(),
            config = %config_name(args.config.as_deref()),
            "scraping"
        );
    }
}

/// The jobs of `set` this scraper pulls: none without the `pull` role.
fn pulled(set: &JobSet, pull: bool) -> Vec<kubeprof_crds::job::ScrapeJob> {
    if pull { set.jobs.clone() } else { Vec::new() }
}

/// Applies every new job set (sinks to the outputs, jobs to the scheduler when `pull`) until
/// SIGTERM or SIGINT, or until the source ends.
async fn follow(
    mut jobs: watch::Receiver<Arc<JobSet>>,
    outputs: &mut Outputs,
    scheduler: &mut Scheduler,
    pull: bool,
) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            changed = jobs.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let set = jobs.borrow_and_update().clone();
                // All or nothing: new jobs may name the new sinks, so they wait for them.
                if let Err(e) = outputs.apply(&set.sinks) {
                    tracing::error!(error = %e, "new sinks are unusable; keeping the previous sinks and jobs");
                    continue;
                }
                scheduler.apply(pulled(&set, pull));
            }
        }
    }
}
