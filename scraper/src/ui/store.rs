//! Reading a file sink's directory (`DIR/<service_name>/<type>/<unix ms>.pb.gz`) from URL
//! parameters, without ever leaving DIR.
//!
//! A service is given as its `service_name` (`shop/checkout`): split on `/`, each component
//! must be one the file sink can have written (`[A-Za-z0-9._-]+`, not `.` or `..`), so no
//! parameter can name a parent, an absolute path or another drive. Symbolic links are not
//! followed when listing, and a resolved file must canonicalize to a path below the canonical
//! DIR, so a link planted in DIR cannot lead out either.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use kubeprof_crds::relabel::Labels;

/// Why a stored profile cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// A parameter is not a name the file sink writes.
    #[error("{0:?} is not a valid {1}")]
    Invalid(String, &'static str),
    /// Nothing there (or outside the directory).
    #[error("no such profile")]
    NotFound,
}

/// Deepest `service_name` folder nesting listed.
const MAX_DEPTH: usize = 8;
/// Most folders visited when listing services.
const MAX_DIRS: usize = 20_000;

/// Whether `s` is a path component the file sink can have written.
pub fn valid_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn components<'a>(s: &'a str, what: &'static str) -> Result<Vec<&'a str>, StoreError> {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() > MAX_DEPTH || !parts.iter().all(|p| valid_component(p)) {
        return Err(StoreError::Invalid(s.to_owned(), what));
    }
    Ok(parts)
}

/// The folder of `service`'s profiles of type `kind`, checked but not required to exist.
pub fn type_dir(root: &Path, service: &str, kind: &str) -> Result<PathBuf, StoreError> {
    let mut dir = root.to_path_buf();
    for part in components(service, "service")? {
        dir.push(part);
    }
    if !valid_component(kind) {
        return Err(StoreError::Invalid(kind.to_owned(), "profile type"));
    }
    dir.push(kind);
    Ok(dir)
}

/// Whether `path` (existing) is below `root` once both are canonical.
fn inside(root: &Path, path: &Path) -> bool {
    match (std::fs::canonicalize(root), std::fs::canonicalize(path)) {
        (Ok(root), Ok(path)) => path.starts_with(root),
        _ => false,
    }
}

/// The stored profile of `service`, `kind`, taken at `ms`.
pub fn profile_path(
    root: &Path,
    service: &str,
    kind: &str,
    ms: u64,
) -> Result<PathBuf, StoreError> {
    let path = type_dir(root, service, kind)?.join(format!("{ms}.pb.gz"));
    if !inside(root, &path) {
        return Err(StoreError::NotFound);
    }
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        _ => Err(StoreError::NotFound),
    }
}

/// The labels stored beside a profile, if readable.
pub fn labels_of(profile: &Path) -> Option<Labels> {
    let path = profile.with_extension("").with_extension("labels.json");
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// A folder of profiles: one service, one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeEntry {
    /// The service (`shop/checkout`).
    pub service: String,
    /// The profile type (`process_cpu`).
    pub kind: String,
}

/// Every (service, type) folder holding at least one profile, sorted. Bounded in depth and in
/// folders visited; links are not followed.
pub fn list_types(root: &Path) -> Vec<TypeEntry> {
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, Vec<String>)> = vec![(root.to_path_buf(), Vec::new())];
    let mut visited = 0;
    while let Some((dir, parts)) = stack.pop() {
        visited += 1;
        if visited > MAX_DIRS {
            break;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut holds_profiles = false;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                if valid_component(&name) && parts.len() <= MAX_DEPTH {
                    let mut p = parts.clone();
                    p.push(name);
                    stack.push((entry.path(), p));
                }
            } else if meta.is_file() && !holds_profiles && parse_ms(&name).is_some() {
                holds_profiles = true;
            }
        }
        if holds_profiles && parts.len() >= 2 {
            let (kind, service) = parts
                .split_last()
                .map_or((String::new(), &[][..]), |(k, s)| (k.clone(), s));
            out.push(TypeEntry {
                service: service.join("/"),
                kind,
            });
        }
    }
    out.sort_by(|a, b| (&a.service, &a.kind).cmp(&(&b.service, &b.kind)));
    out
}

/// `1700000000000.pb.gz` -> 1700000000000.
fn parse_ms(name: &str) -> Option<u64> {
    name.strip_suffix(".pb.gz")?.parse().ok()
}

/// A stored profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Scrape start, Unix milliseconds.
    pub ms: u64,
    /// Compressed size.
    pub bytes: u64,
}

impl Stored {
    /// When it was taken.
    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.ms)
    }
}

/// The profiles of one folder, newest first.
pub fn list_profiles(root: &Path, service: &str, kind: &str) -> Result<Vec<Stored>, StoreError> {
    let dir = type_dir(root, service, kind)?;
    if !dir.is_dir() || !inside(root, &dir) {
        return Err(StoreError::NotFound);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)
        .map_err(|_| StoreError::NotFound)?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(ms) = parse_ms(&name) else {
            continue;
        };
        match entry.path().symlink_metadata() {
            Ok(m) if m.is_file() => out.push(Stored { ms, bytes: m.len() }),
            _ => {}
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.ms));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("root/shop/checkout/process_cpu");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("1000.pb.gz"), b"x").unwrap();
        std::fs::write(t.join("2000.pb.gz"), b"yy").unwrap();
        std::fs::write(
            t.join("2000.labels.json"),
            br#"{"service_name":"shop/checkout"}"#,
        )
        .unwrap();
        std::fs::write(t.join(".2000.pb.gz.tmp-1"), b"partial").unwrap();
        let t = dir.path().join("root/solo/memory");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("5.pb.gz"), b"z").unwrap();
        std::fs::write(dir.path().join("secret.pb.gz"), b"outside").unwrap();
        std::fs::create_dir_all(dir.path().join("outside/cpu")).unwrap();
        std::fs::write(dir.path().join("outside/cpu/7.pb.gz"), b"outside").unwrap();
        dir
    }

    #[test]
    fn lists_services_types_and_profiles_newest_first() {
        let dir = store();
        let root = dir.path().join("root");
        let types = list_types(&root);
        assert_eq!(
            types,
            vec![
                TypeEntry {
                    service: "shop/checkout".into(),
                    kind: "process_cpu".into()
                },
                TypeEntry {
                    service: "solo".into(),
                    kind: "memory".into()
                },
            ]
        );
        let profiles = list_profiles(&root, "shop/checkout", "process_cpu").unwrap();
        assert_eq!(
            profiles,
            vec![Stored { ms: 2000, bytes: 2 }, Stored { ms: 1000, bytes: 1 }]
        );
        let path = profile_path(&root, "shop/checkout", "process_cpu", 2000).unwrap();
        assert_eq!(labels_of(&path).unwrap()["service_name"], "shop/checkout");
    }

    #[test]
    fn no_parameter_leads_outside_the_directory() {
        let dir = store();
        let root = dir.path().join("root");
        for service in [
            "..",
            "../..",
            "shop/../..",
            "/etc",
            "shop//checkout",
            "",
            ".",
            "shop/./checkout",
            "..%2F..",
            "shop\\..\\..",
            "a/b/c/d/e/f/g/h/i",
        ] {
            assert!(
                matches!(
                    profile_path(&root, service, "process_cpu", 1000),
                    Err(StoreError::Invalid(..))
                ),
                "{service:?}"
            );
            assert!(list_profiles(&root, service, "cpu").is_err(), "{service:?}");
        }
        for kind in ["..", "../outside", "/", "cpu/../..", ""] {
            assert!(profile_path(&root, "solo", kind, 5).is_err(), "{kind:?}");
        }
        // The parent's files exist, and still cannot be reached.
        assert!(profile_path(&root, "..", "cpu", 7).is_err());
    }

    #[test]
    fn a_link_planted_in_the_directory_does_not_lead_out() {
        let dir = store();
        let root = dir.path().join("root");
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("evil")).unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("secret.pb.gz"),
            root.join("solo/memory/9.pb.gz"),
        )
        .unwrap();
        assert_eq!(
            profile_path(&root, "evil", "cpu", 7),
            Err(StoreError::NotFound)
        );
        assert!(list_profiles(&root, "evil", "cpu").is_err());
        assert_eq!(
            profile_path(&root, "solo", "memory", 9),
            Err(StoreError::NotFound)
        );
        assert!(!list_types(&root).iter().any(|t| t.service == "evil"));
        assert!(
            !list_profiles(&root, "solo", "memory")
                .unwrap()
                .iter()
                .any(|p| p.ms == 9)
        );
    }
}
