//! Files: `DIR/<service_name>/<type>/<unix ms>.pb.gz`, written atomically, with a size limit.
//!
//! `service_name` usually reads `<namespace>/<container>`: the `/` becomes a folder level, so
//! profiles group by namespace. Every other character outside `[A-Za-z0-9._-]` becomes `_`, and
//! `.`/`..` components are refused, so a label can never write outside DIR. Beside each profile,
//! `<unix ms>.labels.json` holds its labels.

mod config;
mod store;
#[cfg(test)]
mod tests;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::UNIX_EPOCH,
};

use kubeprof_crds::constants::labels;

pub use config::FileConfig;

use super::{Backend, SendError};
use crate::envelope::Envelope;

/// Writes profiles to files.
#[derive(Debug)]
pub struct FileSink {
    config: FileConfig,
    // Serializes writers so retention sees a consistent tree; holds the bytes stored so far
    // (None until the first write scans the directory), so the tree is only walked again when
    // the limit is passed.
    lock: Arc<tokio::sync::Mutex<Option<u64>>>,
}

fn component(s: &str) -> String {
    let c: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match c.as_str() {
        "" | "." | ".." => "_".repeat(c.len().max(1)),
        _ => c,
    }
}

/// Where the labels of the profile at `path` go.
fn labels_path(path: &Path) -> PathBuf {
    path.with_extension("").with_extension("labels.json")
}

fn io_error(path: &Path, source: std::io::Error) -> SendError {
    SendError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl FileSink {
    /// A sink writing below `config.directory` (created on first write).
    pub fn new(config: FileConfig) -> Self {
        Self {
            config,
            lock: Arc::default(),
        }
    }

    /// Where a profile with these labels and time goes.
    pub fn path_for(&self, envelope: &Envelope) -> PathBuf {
        let service = envelope
            .labels
            .get(labels::SERVICE_NAME)
            .map(String::as_str)
            .unwrap_or("unknown_service");
        let kind = envelope
            .labels
            .get(labels::NAME)
            .map(String::as_str)
            .unwrap_or("unknown");
        let mut dir = self.config.directory.clone();
        for part in service.split('/') {
            dir.push(component(part));
        }
        dir.push(component(kind));
        let ms = envelope
            .start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        dir.join(format!("{ms}.pb.gz"))
    }
}

impl Backend for FileSink {
    fn max_batch(&self) -> usize {
        64
    }

    /// Writes every profile of the batch.
    async fn send(&self, batch: &[Envelope]) -> Result<(), SendError> {
        let work: Vec<(PathBuf, Envelope)> = batch
            .iter()
            .map(|e| (self.path_for(e), e.clone()))
            .collect();
        let root = self.config.directory.clone();
        let retention = self.config.retention_bytes;
        let mut stored = self.lock.clone().lock_owned().await;
        // File system calls block: run them off the runtime's workers.
        let written = tokio::task::spawn_blocking(move || {
            let mut total = match *stored {
                Some(total) => total,
                None => {
                    // The first write of this process: what a crash left half-written goes.
                    let removed = store::remove_stale_temps(&root);
                    if removed > 0 {
                        tracing::info!(directory = %root.display(), removed, "removed temporary files a previous run left");
                    }
                    store::tree_size(&root)
                }
            };
            let mut dirs = std::collections::BTreeSet::new();
            for (path, envelope) in &work {
                store::write_atomic(path, &envelope.profile).map_err(|e| io_error(path, e))?;
                let labels_path = labels_path(path);
                let json = serde_json::to_vec_pretty(&envelope.labels).unwrap_or_default();
                store::write_atomic(&labels_path, &json).map_err(|e| io_error(&labels_path, e))?;
                total += (envelope.profile.len() + json.len()) as u64;
                if let Some(dir) = path.parent() {
                    dirs.insert(dir.to_path_buf());
                }
            }
            // One directory fsync per batch makes the renames durable.
            for dir in dirs {
                std::fs::File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io_error(&dir, e))?;
            }
            if total > retention {
                total =
                    store::enforce_retention(&root, retention).map_err(|e| io_error(&root, e))?;
            }
            *stored = Some(total);
            Ok(())
        })
        .await;
        written.unwrap_or_else(|e| Err(SendError::Task(e)))
    }
}
