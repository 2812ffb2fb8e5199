use pretty_assertions::assert_eq;

use super::*;

/// The Go demo process of a BestEffort pod on the recorded real node: kubelet 1.20
/// (`--cgroup-driver=cgroupfs`), containerd 1.6, runc 1.1, cgroup v1 hybrid with cgroup2 at
/// `/sys/fs/cgroup/unified` (runc puts the process in both trees). The same path in every
/// hierarchy; the hierarchy numbering is that machine's.
const REAL_NODE: &[u8] =
    include_bytes!("../../tests/fixtures/cgroup/real-node-containerd-cgroupfs-v1-hybrid");
/// CRI-O under kubelet's systemd driver on cgroup v1, a Guaranteed pod (no QoS slice), with
/// the combined controllers (`cpu,cpuacct`, `net_cls,net_prio`) of RHEL-like kernels.
const CRIO_V1: &[u8] = include_bytes!("../../tests/fixtures/cgroup/crio-systemd-v1-guaranteed");
/// `docker run` on a cgroupfs Docker daemon, cgroup v1 with the v2 line present.
const DOCKER_V1: &[u8] = include_bytes!("../../tests/fixtures/cgroup/docker-cgroupfs-v1");

const ID: &str = "4001ed8ce02c2e2a386a3148cc0b91c3e071ab11c180e3a64f9990ea1186bd11";
const ID2: &str = "821fe3c3cf6af50ad078aba8393505e3b4b35cdb8ccf249d3aeea9869eb6749d";
const UID: &str = "07a7b5ec-cab7-4378-9599-6586f9e077af";
const UID2: &str = "5ac5cae2-616a-45a3-960c-12446681d94a";

/// `uid` as the systemd driver writes it into slice names.
fn underscored(uid: &str) -> String {
    uid.replace('-', "_")
}

/// A cgroup v2 file: one line.
fn v2(path: &str) -> String {
    format!("0::{path}\n")
}

/// A cgroup v1 (or hybrid, with `unified`) file with `path` in every hierarchy.
fn v1(path: &str, unified: bool) -> String {
    let mut out: String = ["name=systemd", "pids", "blkio", "memory", "cpu,cpuacct"]
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}:{c}:{path}\n", 5 - i))
        .collect();
    if unified {
        out.push_str(&v2(path));
    }
    out
}

fn container(runtime: Option<Runtime>, id: &str, pod_uid: Option<&str>) -> Option<Container> {
    Some(Container {
        runtime,
        id: ContainerId(id.to_owned()),
        pod_uid: pod_uid.map(str::to_owned),
    })
}

fn parse(contents: &str) -> Option<Container> {
    match parse_proc_cgroup(contents.as_bytes()) {
        Ok(c) => c,
        Err(e) => panic!("{contents:?}: {e}"),
    }
}

#[test]
fn recorded_files() {
    use Runtime::*;
    for (name, contents, want) in [
        ("real node", REAL_NODE, container(None, ID, Some(UID))),
        (
            "cri-o v1",
            CRIO_V1,
            container(
                Some(CriO),
                "9d1dbf9bbf1c1756761cce68134e6d2d4bba109c08ae6ee53b957f460f4ab544",
                Some("7470fab7-f405-4219-8088-8c0fdbc2f05a"),
            ),
        ),
        (
            "docker v1",
            DOCKER_V1,
            container(
                Some(Docker),
                "351605fe9c2f4f20dccadeccfaff326b6bf407b3da21c08ae20d3f3ca9189854",
                None,
            ),
        ),
    ] {
        assert_eq!(parse_proc_cgroup(contents), Ok(want), "{name}");
    }
}

#[test]
fn the_real_node_joins_its_pod_status() {
    let from_status = parse_status_container_id(&format!("containerd://{ID}")).map(|(_, id)| id);
    let from_cgroup = parse_proc_cgroup(REAL_NODE).map(|c| c.map(|c| c.id));
    assert_eq!(from_cgroup.ok().flatten(), from_status.ok());
}

#[test]
fn kubelet_layouts() {
    use Runtime::*;
    let u = underscored(UID);
    let cases: Vec<(&str, String, Option<Container>)> = vec![
        // systemd driver
        (
            "v2 systemd containerd burstable",
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
            ),
            container(Some(Containerd), ID, Some(UID)),
        ),
        (
            "v2 systemd containerd besteffort",
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
            ),
            container(Some(Containerd), ID, Some(UID)),
        ),
        (
            "v2 systemd containerd guaranteed",
            format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"),
            container(Some(Containerd), ID, Some(UID)),
        ),
        (
            "v2 systemd cri-o",
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{ID}.scope"
            ),
            container(Some(CriO), ID, Some(UID)),
        ),
        (
            "v2 systemd docker",
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/docker-{ID}.scope"
            ),
            container(Some(Docker), ID, Some(UID)),
        ),
        // cgroupfs driver
        (
            "v2 cgroupfs burstable",
            format!("/kubepods/burstable/pod{UID}/{ID}"),
            container(None, ID, Some(UID)),
        ),
        (
            "v2 cgroupfs besteffort",
            format!("/kubepods/besteffort/pod{UID}/{ID}"),
            container(None, ID, Some(UID)),
        ),
        (
            "v2 cgroupfs guaranteed",
            format!("/kubepods/pod{UID}/{ID}"),
            container(None, ID, Some(UID)),
        ),
        (
            "v2 cgroupfs cri-o",
            format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
            container(Some(CriO), ID, Some(UID)),
        ),
        // kind (`--cgroup-root=/kubelet`), a node in Docker, a reader in its own cgroup namespace
        (
            "kind",
            format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
            ),
            container(Some(Containerd), ID, Some(UID)),
        ),
        (
            "node in docker",
            format!("/docker/{ID2}/kubepods/burstable/pod{UID}/{ID}"),
            container(None, ID, Some(UID)),
        ),
        (
            "relative to the reader's cgroup namespace",
            format!("/../../kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"),
            container(Some(Containerd), ID, Some(UID)),
        ),
        // runc in cgroupfs mode given the systemd driver's `slice:prefix:name`
        (
            "systemd path unconverted",
            format!("/kubepods-burstable-pod{u}.slice:cri-containerd:{ID}"),
            container(Some(Containerd), ID, Some(UID)),
        ),
        // cgroups a container made below its own
        (
            "nested below the container",
            format!("/kubepods/burstable/pod{UID}/{ID}/worker/pod{UID2}/{ID2}"),
            container(None, ID, Some(UID)),
        ),
        // a static pod: its config hash
        (
            "static pod",
            format!("/kubepods/burstable/pod6a8cc3b5c9f03da27d33d5f1e8a03d0e/{ID}"),
            container(None, ID, Some("6a8cc3b5c9f03da27d33d5f1e8a03d0e")),
        ),
        // not a container
        (
            "cri-o conmon",
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-conmon-{ID}.scope"
            ),
            None,
        ),
        (
            "cri-o conmon, cgroupfs",
            format!("/kubepods/burstable/pod{UID}/crio-conmon-{ID}"),
            None,
        ),
        (
            "the pod cgroup itself",
            format!("/kubepods/burstable/pod{UID}"),
            None,
        ),
        (
            "a qos slice",
            "/kubepods.slice/kubepods-burstable.slice".to_owned(),
            None,
        ),
        ("kubepods", "/kubepods".to_owned(), None),
    ];
    for (name, path, want) in cases {
        assert_eq!(parse(&v2(&path)), want, "{name}: v2");
        assert_eq!(parse(&v1(&path, false)), want, "{name}: v1");
        assert_eq!(parse(&v1(&path, true)), want, "{name}: hybrid");
    }
}

#[test]
fn docker_without_kubernetes() {
    for path in [
        format!("/docker/{ID}"),
        format!("/system.slice/docker-{ID}.scope"),
    ] {
        assert_eq!(
            parse(&v1(&path, true)),
            container(Some(Runtime::Docker), ID, None),
            "{path}"
        );
    }
    // Docker in Docker: the outer container is the one the node's runtime knows.
    assert_eq!(
        parse(&v2(&format!("/docker/{ID}/docker/{ID2}"))),
        container(Some(Runtime::Docker), ID, None)
    );
}

#[test]
fn host_processes_are_in_no_container() {
    for path in [
        "/",
        "/init.scope",
        "/system.slice/containerd.service",
        "/system.slice/kubelet.service",
        "/system.slice/docker.service",
        "/user.slice/user-1000.slice/session-3.scope",
        "/user.slice/user-1000.slice/user@1000.service/app.slice/podman-1234.scope",
        // a hash-named directory that is no container ID
        "/process_api/94ed1f315b6719365f2d7a39bf3d8a88",
    ] {
        assert_eq!(parse(&v2(path)), None, "{path}: v2");
        assert_eq!(parse(&v1(path, true)), None, "{path}: hybrid");
    }
}

#[test]
fn any_hierarchy_that_names_the_container_wins() {
    // A runtime that left the v2 tree (or one controller) alone: the others still tell.
    let path = format!("/kubepods/besteffort/pod{UID}/{ID}");
    let file = format!("3:memory:/\n2:cpu:{path}\n1:name=systemd:{path}\n0::/\n");
    assert_eq!(parse(&file), container(None, ID, Some(UID)));
    // The v2 line is read first, then name=systemd, then the controllers.
    let other = format!("/kubepods/besteffort/pod{UID2}/{ID2}");
    let file = format!("2:cpu:{other}\n1:name=systemd:{path}\n");
    assert_eq!(parse(&file), container(None, ID, Some(UID)));
    let file = format!("2:cpu:{other}\n1:name=systemd:{other}\n0::{path}\n");
    assert_eq!(parse(&file), container(None, ID, Some(UID)));
}

#[test]
fn ids_are_exact() {
    for segment in [
        // too short, too long, not hex
        ID[..63].to_owned(),
        format!("{ID}0"),
        ID.replace('a', "g"),
        // a unit of another kind
        format!("{ID}.scope"),
        format!("libpod-{ID}.scope"),
        format!("cri-containerd-{ID}.slice"),
    ] {
        let path = format!("/kubepods/burstable/pod{UID}/{segment}");
        assert_eq!(parse(&v2(&path)), None, "{segment}");
    }
    // Upper case (never seen) still joins.
    assert_eq!(
        parse(&v2(&format!("/docker/{}", ID.to_ascii_uppercase()))),
        container(Some(Runtime::Docker), ID, None)
    );
}

#[test]
fn files_of_another_shape_are_errors() {
    assert_eq!(parse_proc_cgroup(b""), Err(CgroupError::Empty));
    assert_eq!(parse_proc_cgroup(b"\n\n"), Err(CgroupError::Empty));
    for (contents, line) in [
        ("hello", 1),
        ("0:/", 1),
        ("0::relative", 1),
        ("x::/", 1),
        ("-1::/", 1),
        ("99999999999::/", 1),
        ("0::/\nnot a cgroup line\n", 2),
        ("1:name=systemd:/\n\n0:/\n", 3),
    ] {
        assert_eq!(
            parse_proc_cgroup(contents.as_bytes()),
            Err(CgroupError::MalformedLine { line }),
            "{contents:?}"
        );
    }
    // Not UTF-8 in an unrelated directory name: still read.
    let mut file = b"0::/kubepods/besteffort/pod".to_vec();
    file.extend_from_slice(UID.as_bytes());
    file.push(b'/');
    file.extend_from_slice(ID.as_bytes());
    file.extend_from_slice(b"/\xff\xfe\n");
    assert_eq!(parse_proc_cgroup(&file), Ok(container(None, ID, Some(UID))));
}

#[test]
fn garbage_never_panics() {
    let alphabet = b"0123456789abcdef:/-_.,=\n podkubeslicescopecrio-docker-cri-containerd-\xff";
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let len = (next() % 300) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let _ = parse_proc_cgroup(&bytes);
        let _ = parse_status_container_id(&String::from_utf8_lossy(&bytes));
    }
    // Mutations of a real file.
    for _ in 0..5_000 {
        let mut bytes = REAL_NODE.to_vec();
        for _ in 0..1 + next() % 4 {
            let i = (next() % bytes.len() as u64) as usize;
            bytes[i] = next() as u8;
        }
        let cut = (next() % (bytes.len() as u64 + 1)) as usize;
        let _ = parse_proc_cgroup(&bytes[..cut]);
    }
    let long = format!("0::{}\n", "/pod".repeat(100_000));
    assert_eq!(parse_proc_cgroup(long.as_bytes()), Ok(None));
}

#[test]
fn status_container_ids() {
    use Runtime::*;
    for (status, want) in [
        (format!("containerd://{ID}"), Ok((Containerd, ID))),
        (format!("cri-o://{ID}"), Ok((CriO, ID))),
        (format!("docker://{ID}"), Ok((Docker, ID))),
        (
            format!("containerd://{}", ID.to_ascii_uppercase()),
            Ok((Containerd, ID)),
        ),
        (String::new(), Err(ContainerIdError::Empty)),
        (
            ID.to_owned(),
            Err(ContainerIdError::NoRuntime(ID.to_owned())),
        ),
        (
            format!("rkt://{ID}"),
            Err(ContainerIdError::UnknownRuntime("rkt".into())),
        ),
        (
            format!("containerd://{}", &ID[..12]),
            Err(ContainerIdError::InvalidId(ID[..12].into())),
        ),
        (
            format!("containerd://cri-containerd-{ID}"),
            Err(ContainerIdError::InvalidId(format!("cri-containerd-{ID}"))),
        ),
    ] {
        let got = parse_status_container_id(&status);
        let want = want.map(|(r, id)| (r, ContainerId(id.to_owned())));
        assert_eq!(got, want, "{status}");
    }
    assert_eq!(
        [Containerd, CriO, Docker].map(|r| r.to_string()),
        ["containerd", "cri-o", "docker"]
    );
}

#[test]
fn every_runtime_joins_its_status() {
    let u = underscored(UID);
    for (path, status) in [
        (
            format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"),
            format!("containerd://{ID}"),
        ),
        (
            format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
            format!("cri-o://{ID}"),
        ),
        (
            format!("/kubepods.slice/kubepods-pod{u}.slice/docker-{ID}.scope"),
            format!("docker://{ID}"),
        ),
    ] {
        let Some(from_cgroup) = parse(&v2(&path)) else {
            panic!("{path}: no container")
        };
        let Ok((runtime, id)) = parse_status_container_id(&status) else {
            panic!("{status}")
        };
        assert_eq!(from_cgroup.id, id, "{path}");
        assert_eq!(from_cgroup.runtime, Some(runtime), "{path}");
    }
}
