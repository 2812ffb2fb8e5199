//! The `kubeprof-operator` command line (main.rs only calls [`main`], so tests can run the same
//! binary from another crate).

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser;
use kubeprof_telemetry::{Telemetry, init_logging};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    owner::Owner,
    runtime::{self, RETRY_CAP, RETRY_FIRST, Settings},
};

/// Reconciles ProfilingPolicies, ProfilingTargets and annotated pods into per-node scrape jobs.
#[derive(Debug, Parser)]
#[command(name = "kubeprof-operator", version, about)]
pub struct Args {
    /// Namespace the operator publishes job shards in (and holds its Lease in).
    #[arg(long, env = "KUBEPROF_NAMESPACE", default_value = "kubeprof")]
    pub namespace: String,
    /// Address of /metrics, /healthz, /readyz and /debug/pprof/profile.
    #[arg(long, env = "KUBEPROF_LISTEN", default_value = "127.0.0.1:9465")]
    pub listen: SocketAddr,
    /// Log format: text or json.
    #[arg(long, env = "KUBEPROF_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Identity in the leader Lease and in Events (the pod name; default: host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a leader that stopped renewing keeps the Lease.
    #[arg(long, env = "KUBEPROF_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How often the leader renews the Lease (and standbys try to take it).
    #[arg(long, env = "KUBEPROF_LEASE_RENEW", default_value = "2s", value_parser = humantime::parse_duration)]
    pub renew_every: Duration,
    /// Wait after a change before reconciling, to coalesce bursts.
    #[arg(long, env = "KUBEPROF_DEBOUNCE", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub debounce: Duration,
    /// The operator's Deployment: made the owner of the objects the operator creates, so that
    /// deleting it (`helm uninstall`) deletes them. Unset: they have no owner.
    #[arg(long, env = "DEPLOYMENT_NAME")]
    pub owner_deployment: Option<String>,
    /// Namespace of `--owner-deployment` (default: `--namespace`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub owner_namespace: Option<String>,
    /// Reconcile everything at least this often.
    #[arg(long, env = "KUBEPROF_RESYNC", default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync: Duration,
    /// The scrapers' ServiceAccount (in --namespace). The operator maintains the Roles
    /// `<it>-named` that let it patch the health report of each node with jobs and, with
    /// --scraper-secrets, get each Secret a job or sink refers to, by name.
    #[arg(
        long,
        env = "KUBEPROF_SCRAPER_SERVICE_ACCOUNT",
        default_value = "kubeprof-scraper"
    )]
    pub scraper_service_account: String,
    /// The eBPF profilers' ServiceAccount (in --namespace), when the chart deploys its eBPF
    /// DaemonSet (`ebpf.enabled`): made a second subject of the `<scraper SA>-named`
    /// RoleBindings (the same health reports and Secrets), and its profilers' own reports
    /// (`ebpf.json` in each node's health report) become each node's eBPF state. Unset: no
    /// eBPF DaemonSet; a scraper that runs the eBPF section itself reports it in its report.
    #[arg(long, env = "KUBEPROF_EBPF_SERVICE_ACCOUNT")]
    pub ebpf_service_account: Option<String>,
    /// Grant the scrapers `get` on the Secrets their jobs and sinks refer to (a Role per
    /// namespace holding such Secrets). The operator then needs `get` on Secrets itself: RBAC
    /// lets it grant only what it holds.
    #[arg(long, env = "KUBEPROF_SCRAPER_SECRETS", default_value_t = true, action = clap::ArgAction::Set)]
    pub scraper_secrets: bool,
    /// A ClusterRole to make the owner of those Roles and RoleBindings, so that deleting it
    /// (`helm uninstall`) deletes them in every namespace; unset: they have no owner.
    #[arg(long, env = "KUBEPROF_OWNER_CLUSTER_ROLE")]
    pub owner_cluster_role: Option<String>,
}

/// Runs the operator with the process's arguments; the process's exit code.
pub fn main() -> ExitCode {
    run(Args::parse())
}

/// Runs the operator with `args` (the first is the program name).
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    run(Args::parse_from(args))
}

fn run(args: Args) -> ExitCode {
    init_logging(&args.log_format);
    // jemalloc returns freed pages to the system only as later allocations pass by, unless a
    // background thread does it: an operator idle after a large compile would keep its peak
    // as RSS. (A binary with another global allocator is unaffected.)
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::debug!(error = %e, "jemalloc background threads unavailable");
    }
    if args.renew_every >= args.lease_duration {
        eprintln!("kubeprof-operator: --renew-every must be shorter than --lease-duration");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubeprof-operator: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(args))
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "operator".into());
    format!("{host}-{}", std::process::id())
}

async fn serve(args: Args) -> ExitCode {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let telemetry = Telemetry::new(registry);
    let shutdown = CancellationToken::new();
    if !telemetry
        .serve_or_report(args.listen, shutdown.clone(), "kubeprof-operator")
        .await
    {
        return ExitCode::from(1);
    }
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kubeprof-operator: cannot configure the Kubernetes client: {e}");
            return ExitCode::from(1);
        }
    };
    let owner = Owner::resolve(
        client.clone(),
        args.owner_namespace.as_deref().unwrap_or(&args.namespace),
        args.owner_deployment.as_deref(),
    )
    .await;
    let settings = Settings {
        namespace: args.namespace.clone(),
        identity: args.identity.clone().unwrap_or_else(default_identity),
        lease_duration: args.lease_duration,
        renew_every: args.renew_every,
        debounce: args.debounce,
        resync: args.resync,
        retry_first: RETRY_FIRST,
        retry_cap: RETRY_CAP,
        scraper_service_account: args.scraper_service_account.clone(),
        ebpf_service_account: args.ebpf_service_account.clone(),
        scraper_secrets: args.scraper_secrets,
        owner_cluster_role: args.owner_cluster_role.clone(),
        owner,
    };
    tracing::info!(namespace = %settings.namespace, identity = %settings.identity, "starting");
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        let Ok(mut term) = term else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        stop.cancel();
    });
    let t = telemetry.clone();
    let result = runtime::run(
        client,
        settings,
        metrics,
        move |r| t.set_ready(r),
        shutdown.clone(),
    )
    .await;
    telemetry.set_ready(false);
    shutdown.cancel();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubeprof-operator: {e}");
            ExitCode::from(1)
        }
    }
}
