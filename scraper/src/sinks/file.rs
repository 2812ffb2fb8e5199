//! Files: `DIR/<service_name>/<type>/<unix ms>.pb.gz`, written atomically, with a size limit.
//!
//! `service_name` usually reads `<namespace>/<container>`: the `/` becomes a folder level, so
//! profiles group by namespace. Every other character outside `[A-Za-z0-9._-]` becomes `_`, and
//! `.`/`..` components are refused, so a label can never write outside DIR. Beside each profile,
//! `<unix ms>.labels.json` holds its labels.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::UNIX_EPOCH,
};

use kubeprof_crds::constants::labels;

use super::{Envelope, SendError};

/// The file sink's settings.
#[derive(Clone, Debug)]
pub struct FileConfig {
    /// Root directory.
    pub directory: PathBuf,
    /// Oldest files are deleted once the directory holds more than this.
    pub retention_bytes: u64,
}

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

    /// Writes every profile of the batch.
    pub async fn send(&self, batch: &[Envelope]) -> Result<(), SendError> {
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
                None => tree_size(&root),
            };
            let mut dirs = std::collections::BTreeSet::new();
            for (path, envelope) in &work {
                write_atomic(path, &envelope.profile).map_err(|e| io_error(path, e))?;
                let labels_path = path.with_extension("").with_extension("labels.json");
                let json = serde_json::to_vec_pretty(&envelope.labels).unwrap_or_default();
                write_atomic(&labels_path, &json).map_err(|e| io_error(&labels_path, e))?;
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
                total = enforce_retention(&root, retention).map_err(|e| io_error(&root, e))?;
            }
            *stored = Some(total);
            Ok(())
        })
        .await;
        written.unwrap_or_else(|e| Err(SendError::retryable("io", e.to_string())))
    }
}

fn io_error(path: &Path, e: std::io::Error) -> SendError {
    // A full or read-only disk does not heal by itself quickly, but often does (cleanup,
    // remount): retry with backoff rather than drop at once.
    SendError::retryable("io", format!("{}: {e}", path.display()))
}

/// Writes to a temporary name in the same directory, fsyncs and renames (the caller fsyncs the
/// directory once per batch).
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Bytes of all files below `root`.
fn tree_size(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Deletes the oldest profiles (and their labels) until the tree holds at most `limit` bytes;
/// returns the bytes left.
fn enforce_retention(root: &Path, limit: u64) -> std::io::Result<u64> {
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(ms) = name
                    .strip_suffix(".pb.gz")
                    .and_then(|n| n.parse::<u128>().ok())
                {
                    files.push((ms, entry.path(), meta.len()));
                }
            }
        }
    }
    if total <= limit {
        return Ok(total);
    }
    files.sort();
    for (_, path, len) in files {
        if total <= limit {
            break;
        }
        let labels = path.with_extension("").with_extension("labels.json");
        let labels_len = std::fs::metadata(&labels).map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(&path)?;
        let _ = std::fs::remove_file(&labels);
        total = total.saturating_sub(len + labels_len);
    }
    Ok(total)
}
