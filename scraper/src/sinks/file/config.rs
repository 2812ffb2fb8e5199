//! The file sink's settings.

use std::path::PathBuf;

use kubeprof_crds::policy::FileSink as FileSpec;

/// The file sink's settings.
#[derive(Clone, Debug)]
pub struct FileConfig {
    /// Root directory.
    pub directory: PathBuf,
    /// Oldest files are deleted once the directory holds more than this.
    pub retention_bytes: u64,
}

impl FileConfig {
    /// The settings of `spec` (1 GiB of retention by default).
    pub fn from_spec(spec: &FileSpec) -> Self {
        Self {
            directory: spec.directory.clone().into(),
            retention_bytes: spec.retention_bytes.map_or(1 << 30, |b| b.max(1) as u64),
        }
    }
}
