//! The file system side of the file sink: atomic writes and retention.

use std::{io::Write as _, path::Path};

/// Writes to a temporary name in the same directory, fsyncs and renames (the caller fsyncs the
/// directory once per batch).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dirs(dir)?;
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

/// Creates `dir` and its missing parents group-writable (0775, whatever the umask): in a
/// cluster the pull scraper (user 65532) and the eBPF DaemonSet (root, group 65532) write into
/// one file sink host directory, and each must be able to add to a directory the other made.
fn create_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o775)),
        // Made by the other writer meanwhile.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `name` is a temporary file [`write_atomic`] left behind (a crash between create and
/// rename): `.<name>.tmp-<pid>` of another process than this one.
fn is_stale_temp(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp-")
            .is_some_and(|(_, pid)| pid.parse::<u32>().is_ok_and(|p| p != std::process::id()))
}

/// Deletes the temporary files an earlier process left below `root`; returns how many.
pub fn remove_stale_temps(root: &Path) -> usize {
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(_)
                    if is_stale_temp(&entry.file_name().to_string_lossy())
                        && std::fs::remove_file(entry.path()).is_ok() =>
                {
                    removed += 1;
                }
                _ => {}
            }
        }
    }
    removed
}

/// Bytes of all files below `root`.
pub fn tree_size(root: &Path) -> u64 {
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
pub fn enforce_retention(root: &Path, limit: u64) -> std::io::Result<u64> {
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
                if is_stale_temp(&name) {
                    // Left by a crash: the oldest data of all, and never renamed into place.
                    files.push((0, entry.path(), meta.len()));
                } else if let Some(ms) = name
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
        let labels = super::labels_path(&path);
        let labels_len = std::fs::metadata(&labels).map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(&path)?;
        let _ = std::fs::remove_file(&labels);
        total = total.saturating_sub(len + labels_len);
    }
    Ok(total)
}
