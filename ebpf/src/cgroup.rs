//! Which container, and which pod, a process runs in: read from the cgroup paths in
//! `/proc/<pid>/cgroup`, joined to Kubernetes through the container ID.
//!
//! Each line of that file is `hierarchy-ID:controller-list:cgroup-path`: one line per cgroup v1
//! hierarchy (`4:memory:/...`, `9:name=systemd:/...`) and/or the cgroup v2 line (`0::/...`).
//! The paths kubelet and the runtimes give a container process:
//!
//! | kubelet driver | runtime | path (`<qos>`: `burstable` or `besteffort`; none for Guaranteed) |
//! |---|---|---|
//! | cgroupfs | containerd, dockershim | `/kubepods/<qos>/pod<uid>/<id>` |
//! | cgroupfs | CRI-O | `/kubepods/<qos>/pod<uid>/crio-<id>` |
//! | systemd | containerd | `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope` |
//! | systemd | CRI-O, Docker | the same with `crio-<id>.scope`, `docker-<id>.scope` |
//! | systemd, runc in cgroupfs mode | containerd | `.../kubepods-<qos>-pod<uid_>.slice:cri-containerd:<id>` |
//! | (no kubelet) | Docker | `/docker/<id>`, `/system.slice/docker-<id>.scope` |
//!
//! `<id>` is the runtime's 64-hex container ID, `<uid_>` the pod UID with `_` for `-`. kind and
//! `--cgroup-root` put the same tree under a prefix (`/kubelet.slice/kubelet-kubepods.slice/...`,
//! `/docker/<node>/kubepods/...`), and a reader in its own cgroup namespace sees paths relative
//! to it (`/../../kubepods/...`): so the pod segment is searched for, not expected at the root.
//! CRI-O's monitor runs in `crio-conmon-<id>.scope`, which is not the container. The pod's pause
//! container is a container too, under the sandbox ID, which no `containerStatuses` entry
//! carries. A static pod's cgroup carries its config hash (annotation
//! `kubernetes.io/config.hash`), not its mirror pod's UID.
//!
//! Layouts read in open-telemetry/opentelemetry-ebpf-profiler (`containermetadata/
//! containermetadata.go` and its `testdata/`), grafana/agent
//! (`component/pyroscope/ebpf/ebpfspy/sd/procfs.go`) and kubelet's cgroup naming
//! (`pkg/kubelet/cm/cgroup_manager_linux.go`, `pkg/kubelet/cm/qos_container_manager_linux.go`),
//! and recorded on a kubelet 1.20 + containerd 1.6 node (cgroupfs driver, cgroup v1 hybrid:
//! `tests/fixtures/cgroup/`).

use std::fmt;

/// A container runtime, named as Kubernetes names it in `containerID` (`<runtime>://<id>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Runtime {
    /// containerd's CRI plugin (`containerd://`).
    Containerd,
    /// CRI-O (`cri-o://`).
    CriO,
    /// Docker, through dockershim or cri-dockerd (`docker://`).
    Docker,
}

impl Runtime {
    /// The scheme Kubernetes reports: `containerd`, `cri-o` or `docker`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Docker => "docker",
        }
    }

    fn from_scheme(scheme: &str) -> Option<Self> {
        match scheme {
            "containerd" => Some(Self::Containerd),
            "cri-o" => Some(Self::CriO),
            "docker" => Some(Self::Docker),
            _ => None,
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container ID as both sides agree on it: 64 lowercase hex digits, no runtime prefix. Made
/// only by [`parse_proc_cgroup`] and [`parse_status_container_id`], so equal IDs join.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    /// `id` when it is 64 hex digits (either case; kept lowercase).
    fn parse(id: &str) -> Option<Self> {
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(id.to_ascii_lowercase()))
    }

    /// The 64 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The container a process runs in, as its cgroup path tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The runtime, when the path names it (systemd driver, CRI-O, Docker outside Kubernetes);
    /// `None` for the bare IDs of the cgroupfs driver, which containerd and dockershim share.
    pub runtime: Option<Runtime>,
    /// The container ID.
    pub id: ContainerId,
    /// The pod's UID (with dashes) when the container is in a kubelet pod cgroup.
    pub pod_uid: Option<String>,
}

/// Why the contents are not a `/proc/<pid>/cgroup` file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgroupError {
    /// No line at all.
    #[error("the cgroup file is empty")]
    Empty,
    /// A line of another shape.
    #[error("line {line} of the cgroup file is not `hierarchy-ID:controller-list:/cgroup-path`")]
    MalformedLine {
        /// 1-based line number.
        line: usize,
    },
}

/// Why a `containerID` from a pod's status does not name a container.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContainerIdError {
    /// Empty: the container has not been created yet.
    #[error("no container ID yet (the container has not been created)")]
    Empty,
    /// No `<runtime>://` in front.
    #[error("container ID {0:?} lacks the `<runtime>://` prefix")]
    NoRuntime(String),
    /// A runtime other than containerd, CRI-O and Docker.
    #[error("container runtime {0:?} is not one of containerd, cri-o, docker")]
    UnknownRuntime(String),
    /// The part after `://` is not 64 hex digits.
    #[error("container ID {0:?} is not 64 hex digits")]
    InvalidId(String),
}

/// The container and pod of a process, from the contents of its `/proc/<pid>/cgroup`; `None`
/// for a process outside any container (`/init.scope`, `/system.slice/containerd.service`,
/// `/user.slice/...`, a pod's cgroup itself, CRI-O's conmon).
///
/// Every line is checked; the first that names a container wins, the cgroup v2 line first,
/// then v1's `name=systemd`, then the controllers in file order. In hybrid mode they all agree;
/// preferring a container over a host-looking line covers a runtime that left one hierarchy
/// alone. The outermost container of a path wins: the node's runtime knows that one.
pub fn parse_proc_cgroup(contents: &[u8]) -> Result<Option<Container>, CgroupError> {
    // Kernel paths are bytes; a container ID is ASCII, so a lossy view never changes a match.
    let text = String::from_utf8_lossy(contents);
    let mut paths: Vec<(u8, &str)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(CgroupError::MalformedLine { line: n + 1 });
        };
        let Ok(hierarchy) = hierarchy.parse::<u32>() else {
            return Err(CgroupError::MalformedLine { line: n + 1 });
        };
        if !path.starts_with('/') {
            return Err(CgroupError::MalformedLine { line: n + 1 });
        }
        let rank = if hierarchy == 0 && controllers.is_empty() {
            0
        } else if controllers.split(',').any(|c| c == "name=systemd") {
            1
        } else {
            2
        };
        paths.push((rank, path));
    }
    if paths.is_empty() {
        return Err(CgroupError::Empty);
    }
    // Stable: file order within a rank.
    paths.sort_by_key(|(rank, _)| *rank);
    Ok(paths
        .into_iter()
        .find_map(|(_, path)| container_of_path(path)))
}

/// The container ID of a pod's `status.containerStatuses[].containerID`
/// (`containerd://<id>`, `cri-o://<id>`, `docker://<id>`), in the form [`parse_proc_cgroup`]
/// gives, with its runtime.
pub fn parse_status_container_id(status: &str) -> Result<(Runtime, ContainerId), ContainerIdError> {
    if status.is_empty() {
        return Err(ContainerIdError::Empty);
    }
    let Some((scheme, id)) = status.split_once("://") else {
        return Err(ContainerIdError::NoRuntime(status.to_owned()));
    };
    let runtime = Runtime::from_scheme(scheme)
        .ok_or_else(|| ContainerIdError::UnknownRuntime(scheme.to_owned()))?;
    let id = ContainerId::parse(id).ok_or_else(|| ContainerIdError::InvalidId(id.to_owned()))?;
    Ok((runtime, id))
}

/// The container one cgroup path names, if any.
fn container_of_path(path: &str) -> Option<Container> {
    let segments: Vec<&str> = path
        .split('/')
        .filter(|s| !matches!(*s, "" | "." | ".."))
        .collect();
    // Inside kubelet's tree the container is the segment right under the pod's; the first pod
    // segment is kubelet's (a container may make cgroups of its own below).
    for (i, segment) in segments.iter().enumerate() {
        if let Some(container) = joined_pod_and_container(segment) {
            return Some(container);
        }
        if let Some(uid) = pod_uid(segment) {
            let (runtime, id) = container_segment(segments.get(i + 1)?, Some(segment))?;
            return Some(Container {
                runtime,
                id,
                pod_uid: Some(uid),
            });
        }
    }
    let mut parent = None;
    for segment in &segments {
        if let Some((runtime, id)) = container_segment(segment, parent) {
            return Some(Container {
                runtime,
                id,
                pod_uid: None,
            });
        }
        parent = Some(*segment);
    }
    None
}

/// The runtime prefixes of a container's own cgroup (the systemd driver's scope names, and
/// CRI-O's directory name with the cgroupfs driver).
const PREFIXES: [(&str, Runtime); 3] = [
    ("cri-containerd-", Runtime::Containerd),
    ("crio-", Runtime::CriO),
    ("docker-", Runtime::Docker),
];

/// A container's cgroup: `<prefix><id>[.scope]`, or a bare `<id>` (Docker's when under a
/// `docker` cgroup).
fn container_segment(
    segment: &str,
    parent: Option<&str>,
) -> Option<(Option<Runtime>, ContainerId)> {
    let stem = segment.strip_suffix(".scope").unwrap_or(segment);
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = stem.strip_prefix(prefix) {
            // `crio-conmon-<id>` ends here: "conmon-<id>" is no ID.
            return ContainerId::parse(id).map(|id| (Some(runtime), id));
        }
    }
    if stem.len() != segment.len() {
        // A scope without a runtime prefix is a systemd unit, not a container.
        return None;
    }
    let id = ContainerId::parse(segment)?;
    Some(((parent == Some("docker")).then_some(Runtime::Docker), id))
}

/// The pod UID of a kubelet pod cgroup: `pod<uid>` (cgroupfs driver) or
/// `<...kubepods...>-pod<uid_with_underscores>.slice` (systemd driver).
fn pod_uid(segment: &str) -> Option<String> {
    if let Some(uid) = segment.strip_prefix("pod") {
        return is_pod_uid(uid).then(|| uid.to_owned());
    }
    let (parent, uid) = segment.strip_suffix(".slice")?.rsplit_once("-pod")?;
    if !parent.contains("kubepods") {
        return None;
    }
    let uid = uid.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// A UUID, or a static pod's 32-hex config hash.
fn is_pod_uid(uid: &str) -> bool {
    (32..=36).contains(&uid.len()) && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// The systemd driver's `<pod slice>:<prefix>:<id>` as one directory: what runc makes of it when
/// it runs in cgroupfs mode under a kubelet in systemd mode.
fn joined_pod_and_container(segment: &str) -> Option<Container> {
    let mut parts = segment.splitn(3, ':');
    let (slice, prefix, id) = (parts.next()?, parts.next()?, parts.next()?);
    let runtime = match prefix {
        "cri-containerd" => Runtime::Containerd,
        "crio" => Runtime::CriO,
        "docker" => Runtime::Docker,
        _ => return None,
    };
    Some(Container {
        runtime: Some(runtime),
        id: ContainerId::parse(id)?,
        pod_uid: pod_uid(slice),
    })
}

#[cfg(test)]
mod tests;
