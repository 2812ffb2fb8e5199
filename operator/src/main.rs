use clap::Parser;

/// Reconciles ProfilingPolicies, ProfilingTargets and annotated pods into per-node scrape jobs.
#[derive(Debug, Parser)]
#[command(name = "kubeprof-operator", version, about)]
struct Args {
    /// Namespace the operator publishes job shards in.
    #[arg(long, env = "KUBEPROF_NAMESPACE", default_value = "kubeprof")]
    namespace: String,
}

fn main() {
    let args = Args::parse();
    eprintln!(
        "kubeprof-operator {}: reconciliation is not implemented yet (namespace {})",
        env!("CARGO_PKG_VERSION"),
        args.namespace
    );
    std::process::exit(1);
}
