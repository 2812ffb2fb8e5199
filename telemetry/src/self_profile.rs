//! The CPU profile a kubeprof binary serves of itself (pprof-rs), working under a read-only root
//! filesystem.
//!
//! pprof-rs 0.15 keeps the samples of a running profile in a `tempfile::NamedTempFile` created
//! in `tempfile::env::temp_dir()` (`$TMPDIR`, else `/tmp`): once when the profiler is first
//! used, and again each time a profile stops. If the first one cannot be created, pprof-rs
//! caches that error and the profiler stays unusable for the life of the process. In a pod
//! with `readOnlyRootFilesystem` and nothing mounted at `/tmp` that is every request, so the
//! directory is chosen here, before pprof-rs first runs.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

/// Tried after `$TMPDIR`/`/tmp`: memory-backed, and mounted writable in every container by the
/// container runtime, read-only root or not.
const FALLBACK_SCRATCH_DIRS: &[&str] = &["/dev/shm"];

/// Why a self-profile could not be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProfileError {
    /// No directory takes the profiler's sample buffer.
    #[error(
        "the CPU profiler needs a writable directory for its sample buffer and none was found \
         ({tried}); mount a writable volume (an emptyDir) at /tmp or point TMPDIR at one"
    )]
    NoScratchDir {
        /// Each directory tried, with why it was refused.
        tried: String,
    },
    /// pprof-rs refused to start.
    #[error("cannot start the CPU profiler: {0}")]
    Start(#[source] pprof::Error),
    /// pprof-rs could not build the report.
    #[error("cannot build the profile: {0}")]
    Report(#[source] pprof::Error),
    /// pprof-rs could not encode the report as pprof.
    #[error("cannot encode the profile: {0}")]
    Encode(#[source] pprof::Error),
    /// Gzip failed.
    #[error("cannot compress the profile: {0}")]
    Compress(#[source] std::io::Error),
}

/// The directory pprof-rs uses, once one was found to work.
static SCRATCH_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Profiles this process's CPU for `duration`: a gzipped pprof protobuf, as Go serves it.
pub(crate) async fn collect(duration: Duration) -> Result<Vec<u8>, ProfileError> {
    ensure_scratch_dir()?;
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(100)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(ProfileError::Start)?;
    tokio::time::sleep(duration).await;
    let report = guard.report().build().map_err(ProfileError::Report)?;
    drop(guard);
    let profile = report.pprof().map_err(ProfileError::Encode)?;
    use pprof::protos::Message as _;
    let raw = profile.encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw)
        .and_then(|()| gz.finish())
        .map_err(ProfileError::Compress)
}

/// Makes pprof-rs's temporary directory one that takes a file. Not cached on failure, so a
/// volume that shows up later is still found; pprof-rs is not touched until this succeeded.
fn ensure_scratch_dir() -> Result<&'static Path, ProfileError> {
    if let Some(dir) = SCRATCH_DIR.get() {
        return Ok(dir);
    }
    let default = tempfile::env::temp_dir();
    let candidates: Vec<PathBuf> = std::iter::once(default.clone())
        .chain(FALLBACK_SCRATCH_DIRS.iter().map(PathBuf::from))
        .collect();
    let chosen = first_writable(&candidates)?;
    if chosen != default {
        // Process-wide, but only pprof-rs creates temporary files without naming a directory.
        if let Err(already) = tempfile::env::override_temp_dir(&chosen) {
            return Err(ProfileError::NoScratchDir {
                tried: format!(
                    "{}: set as the temporary directory before kubeprof could choose one",
                    already.display()
                ),
            });
        }
        tracing::info!(
            dir = %chosen.display(),
            unwritable = %default.display(),
            "the CPU profiler keeps its samples in a fallback directory"
        );
    }
    Ok(SCRATCH_DIR.get_or_init(|| chosen))
}

/// The first of `candidates` in which a file can be created.
fn first_writable(candidates: &[PathBuf]) -> Result<PathBuf, ProfileError> {
    let mut tried = Vec::new();
    for dir in candidates {
        match tempfile::NamedTempFile::new_in(dir) {
            Ok(_probe) => return Ok(dir.clone()),
            Err(e) => tried.push(format!("{}: {}", dir.display(), e.kind())),
        }
    }
    Err(ProfileError::NoScratchDir {
        tried: tried.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_directory_that_takes_a_file_wins() {
        let writable = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let chosen = first_writable(&[
            PathBuf::from("/nonexistent/kubeprof"),
            writable.path().to_path_buf(),
            other.path().to_path_buf(),
        ])
        .unwrap();
        assert_eq!(chosen, writable.path());
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(writable.path()).unwrap().count(), 0);
    }

    #[test]
    fn no_writable_directory_says_what_was_tried_and_what_to_do() {
        // A regular file refuses children even to root, who ignores read-only mode bits.
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = first_writable(&[
            PathBuf::from("/nonexistent/kubeprof"),
            file.path().to_path_buf(),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/nonexistent/kubeprof: entity not found"),
            "{err}"
        );
        assert!(err.contains(&file.path().display().to_string()), "{err}");
        assert!(err.contains("emptyDir) at /tmp or point TMPDIR"), "{err}");
    }
}
