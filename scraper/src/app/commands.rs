//! The subcommands that do not scrape: `check-config` and `flamegraph`.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use super::PROGRAM;
use crate::{config::Config, flamegraph};

/// `check-config FILE`: 0 when valid, 2 when not.
pub fn check_config(path: &Path) -> ExitCode {
    match Config::load(&path.to_string_lossy()) {
        Ok(c) => {
            let set = c.job_set();
            println!(
                "{}: valid ({} jobs, {} sinks)",
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
    #[error(transparent)]
    Render(#[from] flamegraph::FlamegraphError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `flamegraph PROFILE [-o SVG]`: 0 when written, 1 when not.
pub fn flamegraph(profile: &Path, output: Option<PathBuf>, sample_type: Option<&str>) -> ExitCode {
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
    match render(profile, &output, sample_type) {
        Ok(()) => {
            println!("wrote {}", output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            ExitCode::from(1)
        }
    }
}

fn render(
    profile: &Path,
    output: &Path,
    sample_type: Option<&str>,
) -> Result<(), FlamegraphCommandError> {
    let body = std::fs::read(profile).map_err(|source| FlamegraphCommandError::Read {
        path: profile.to_path_buf(),
        source,
    })?;
    let mut svg = Vec::new();
    flamegraph::render(&body, sample_type, &mut svg)?;
    std::fs::write(output, svg).map_err(|source| FlamegraphCommandError::Write {
        path: output.to_path_buf(),
        source,
    })
}
