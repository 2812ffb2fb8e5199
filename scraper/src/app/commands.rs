//! The subcommands that do not scrape: `check-config` and `flamegraph`.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use super::PROGRAM;
use kubeprof_pprof::{DecodeLimits, Profile};

use crate::{config::Config, flamegraph};

/// `check-config FILE`: 0 when valid, 2 when not. The same checks as `run`, sinks built.
pub fn check_config(path: &Path, secrets_dir: Option<PathBuf>) -> ExitCode {
    let secrets = crate::SecretsDir(secrets_dir);
    let checked = Config::load(&path.to_string_lossy()).and_then(|c| {
        // Building a gRPC sink needs a runtime, as in `run`.
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt
                .block_on(async { c.check_resources(&secrets) })
                .map(|()| c),
            Err(e) => Err(crate::ConfigError::Read {
                path: "<tokio runtime>".into(),
                source: e,
            }),
        }
    });
    match checked {
        Ok(c) => {
            let set = c.job_set();
            let ebpf = set.ebpf.as_ref().map_or(String::new(), |e| {
                format!(
                    ", eBPF at {} Hz every {}",
                    e.sample_rate,
                    humantime::format_duration(e.period)
                )
            });
            println!(
                "{}: valid ({} jobs, {} sinks{ebpf})",
                path.display(),
                set.jobs.len(),
                set.sinks.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{PROGRAM}: invalid configuration {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

/// Why a flame graph was not written.
#[derive(Debug, thiserror::Error)]
enum FlamegraphCommandError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: flamegraph::FlamegraphError,
    },
    #[error(transparent)]
    Render(#[from] flamegraph::FlamegraphError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `flamegraph` draws.
#[derive(Debug)]
pub struct FlamegraphArgs {
    /// Profiles, merged.
    pub profiles: Vec<PathBuf>,
    /// Base profiles for a difference (none: a plain flame graph).
    pub base: Vec<PathBuf>,
    /// Where to write (default: beside the first profile).
    pub output: Option<PathBuf>,
    /// The sample type.
    pub sample_type: Option<String>,
    /// Scale the base to the same total.
    pub normalize: bool,
}

/// `flamegraph PROFILE... [-o SVG] [--base PROFILE...]`: 0 when written (an empty profile
/// too: the SVG says so, and so does stderr), 1 when not.
pub fn flamegraph(args: FlamegraphArgs) -> ExitCode {
    let Some(first) = args.profiles.first() else {
        eprintln!("{PROGRAM}: no profile given");
        return ExitCode::from(1);
    };
    let output = args.output.clone().unwrap_or_else(|| {
        let name = first
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        first.with_file_name(format!(
            "{}.svg",
            name.trim_end_matches(".gz").trim_end_matches(".pb")
        ))
    });
    match render(&args, &output) {
        Ok(written) => {
            if written.empty {
                eprintln!(
                    "{PROGRAM}: the profile has no samples of type {} (an idle process's CPU profile is empty); the SVG says so",
                    written.title
                );
            }
            println!("wrote {}", output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            ExitCode::from(1)
        }
    }
}

fn read(paths: &[PathBuf]) -> Result<Vec<Profile>, FlamegraphCommandError> {
    paths
        .iter()
        .map(|path| {
            let body = std::fs::read(path).map_err(|source| FlamegraphCommandError::Read {
                path: path.clone(),
                source,
            })?;
            flamegraph::decode(&body, &DecodeLimits::default()).map_err(|source| {
                FlamegraphCommandError::Decode {
                    path: path.clone(),
                    source,
                }
            })
        })
        .collect()
}

fn render(
    args: &FlamegraphArgs,
    output: &Path,
) -> Result<flamegraph::Written, FlamegraphCommandError> {
    let profiles = read(&args.profiles)?;
    let base = read(&args.base)?;
    let mut svg = Vec::new();
    let written = flamegraph::render_profiles(
        &profiles,
        &base,
        args.sample_type.as_deref(),
        args.normalize,
        &mut svg,
    )?;
    std::fs::write(output, svg).map_err(|source| FlamegraphCommandError::Write {
        path: output.to_path_buf(),
        source,
    })?;
    Ok(written)
}
