"""The Helm chart, with Helm's own engine (helm-python-sdk) and the Kubernetes schemas
(kubernetes-validate): it lints, its values schema refuses typos, its pods are hardened, its RBAC
is exactly the README's table, every rendered object (optional ones included) is valid for the
oldest Kubernetes the validator knows (1.25) and a current one, and it ships the generated CRDs."""
import json
import os
import pathlib
import re
import subprocess

import helm_python
import kubernetes_validate
import pytest
import yaml
from helm_python import _native

CHART = pathlib.Path(__file__).resolve().parents[1] / "kubeprof"
REPO = CHART.parents[1]
RELEASE = "kp"
NAMESPACE = "kubeprof"

# Every optional object switched on.
EVERYTHING = {
    "metrics": {"service": {"enabled": True}, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "networkPolicy": {"enabled": True, "metricsFrom": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]},
    "defaultPolicy": {"create": True},
    "commonLabels": {"team": "platform"},
    "commonAnnotations": {"owner": "platform@example.com"},
    "imagePullSecrets": [{"name": "regcred"}],
    "operator": {"priorityClassName": "high", "podLabels": {"a": "b"}, "podAnnotations": {"c": "d"}},
    "scraper": {"priorityClassName": "node-critical", "podLabels": {"a": "b"}, "podAnnotations": {"c": "d"}},
}


def render(values=None, kube_version=None):
    """The chart's objects as [(template, object)]. `kube_version` sets .Capabilities.KubeVersion
    (helm-python-sdk passes it to Helm but exposes it only on its native call)."""
    chart = helm_python.Chart.load(str(CHART))
    try:
        if kube_version is None:
            out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
        else:
            opts = {"name": RELEASE, "namespace": NAMESPACE, "is_install": True, "kube_version": kube_version}
            out = json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values or {}), json.dumps(opts)))
    finally:
        chart.close()
    docs = []
    for name, text in sorted(out.items()):
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((name, doc))
    return docs


def objects(docs, kind):
    return [doc for _, doc in docs if doc["kind"] == kind]


def workload(docs, kind):
    (found,) = objects(docs, kind)
    return found


def test_lint_is_clean():
    result = helm_python.lint(str(CHART), strict=True)
    # Helm's severities: 1 info, 2 warning, 3 error.
    messages = [m for m in result["messages"] if m["severity"] >= 2]
    assert not messages and not result["errors"], result


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, where",
    [
        ({"operater": {"replicas": 3}}, "additional properties 'operater'"),
        ({"operator": {"replica": 3}}, "additional properties 'replica'"),
        ({"scraper": {"fileSink": {"hostpath": "/var/lib/kp"}}}, "additional properties 'hostpath'"),
        ({"metrics": {"serviceMonitor": {"enable": True}}}, "additional properties 'enable'"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"operator": {"replicas": "two"}}, "/operator/replicas"),
        ({"logFormat": "xml"}, "/logFormat"),
        # A hostPath gets its owner changed: "/" or a top-level folder of the host is refused.
        ({"scraper": {"fileSink": {"hostPath": "/var"}}}, "/scraper/fileSink/hostPath"),
        ({"scraper": {"fileSink": {"hostPath": "relative/dir"}}}, "/scraper/fileSink/hostPath"),
    ],
)
def test_a_typo_or_wrong_type_in_values_fails_the_install(values, where):
    with pytest.raises(helm_python.HelmValuesError) as refused:
        render(values)
    assert where in str(refused.value), str(refused.value)


# Values that are Kubernetes objects (documented by `kubectl explain`), not the chart's own.
KUBERNETES_TYPED = {"resources", "livenessProbe", "readinessProbe", "podSecurityContext", "securityContext", "spec"}


def test_every_value_is_documented_where_it_is_defined():
    """Each key of values.yaml the schema defines has a comment above it or on its line (keys
    inside free-form values - resources, probes, security contexts, the policy spec - are
    Kubernetes' own fields and are not)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack = []  # (indent, schema of that key's value)
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else schema
        if parent is None or "properties" not in parent:
            stack.append((indent, None))
            continue
        assert key in parent["properties"], f"values.yaml:{i + 1}: {key} is not in values.schema.json"
        above = lines[i - 1].strip() if i else ""
        if not above.startswith("#") and "#" not in line.split(":", 1)[1]:
            undocumented.append(f"values.yaml:{i + 1}: {key}")
        stack.append((indent, None if key in KUBERNETES_TYPED else parent["properties"][key]))
    assert not undocumented, "\n".join(undocumented)


# --- hardening ------------------------------------------------------------------------------


def pod_specs(docs):
    return [(doc["kind"], doc["spec"]["template"]["spec"]) for doc in objects(docs, "Deployment") + objects(docs, "DaemonSet")]


@pytest.mark.parametrize("values", [{}, {"scraper": {"fileSink": {"hostPath": ""}}}, EVERYTHING], ids=["defaults", "no-hostpath", "everything"])
def test_every_long_running_container_is_hardened(values):
    specs = pod_specs(render(values))
    assert [kind for kind, _ in specs] == ["Deployment", "DaemonSet"]
    for kind, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, (kind, pod)
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, (kind, pod)
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (kind, sc)
            assert sc["allowPrivilegeEscalation"] is False, (kind, sc)
            assert sc["capabilities"] == {"drop": ["ALL"]}, (kind, sc)
            assert sc.get("runAsUser", pod["runAsUser"]) != 0 and sc.get("runAsNonRoot", True) is True, (kind, sc)
            assert "privileged" not in sc
            # The CPU self-profiler's scratch space, writable under the read-only root.
            (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert "emptyDir" in volumes[tmp["name"]], (kind, volumes[tmp["name"]])
            assert {"name": "metrics", "containerPort": container["ports"][0]["containerPort"]} in container["ports"]
            assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        assert not spec.get("hostNetwork") and not spec.get("hostPID")


def test_the_file_sink_host_directory_is_handed_over_by_a_root_step_with_only_chown():
    spec = workload(render(), "DaemonSet")["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "profiles"]
    assert volume["hostPath"] == {"path": "/var/lib/kubeprof", "type": "DirectoryOrCreate"}
    (init,) = spec["initContainers"]
    assert init["command"] == ["chown", "65532:65532", "/var/lib/kubeprof"], "not recursive: only kubeprof's own directory"
    assert init["securityContext"] == {
        "runAsUser": 0,
        "runAsGroup": 0,
        "runAsNonRoot": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
    }
    assert init["volumeMounts"] == [{"name": "profiles", "mountPath": "/var/lib/kubeprof"}]
    # The owner follows the scraper's user.
    custom = render({"scraper": {"podSecurityContext": {"runAsUser": 1000, "runAsGroup": 2000}}})
    (init,) = workload(custom, "DaemonSet")["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][1] == "1000:2000"


def test_without_a_host_path_the_scraper_has_no_root_step_and_an_emptydir():
    spec = workload(render({"scraper": {"fileSink": {"hostPath": ""}}}), "DaemonSet")["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    (volume,) = [v for v in spec["volumes"] if v["name"] == "profiles"]
    assert volume == {"name": "profiles", "emptyDir": {"sizeLimit": "1Gi"}}


def test_operator_knows_its_own_deployment():
    """What the operator needs to make its Deployment the owner of the objects it creates."""
    docs = render({"fullnameOverride": "prof"})
    deployment = workload(docs, "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DEPLOYMENT_NAME"]["value"] == deployment["metadata"]["name"] == "prof-operator"
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert ("operator", "namespace", "apps", "deployments", "prof-operator", "get") in rendered_rbac(docs)


# --- RBAC -----------------------------------------------------------------------------------


def readme_rbac_rows():
    """The README's RBAC table as (account, scope, group, resource, resource name, verb, why)."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n### RBAC\n", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or not cells[0].startswith("`<release>-"):
            continue
        account, scope, group, resources, names, verbs, why = cells
        group = "" if group == "core" else group.strip("`")
        split = lambda cell: [c.strip().strip("`") for c in cell.split(",") if c.strip()]
        for resource in split(resources):
            for name in split(names) or [None]:
                for verb in split(verbs):
                    rows.append((account.strip("`").removeprefix("<release>-"), scope, group, resource, name, verb, why))
    return rows


def applies(why, read_secrets, ebpf=False):
    """Whether a row holds with `scraper.readSecrets` set to `read_secrets` and `ebpf.enabled`
    to `ebpf`."""
    if "only with `ebpf.enabled`" in why and not ebpf:
        return False
    if "only with `scraper.readSecrets`" in why:
        return read_secrets
    if "only without `scraper.readSecrets`" in why:
        return not read_secrets
    return True


def expected_rbac(fullname, read_secrets=True, ebpf=False):
    """The rows the chart renders (not those the operator grants at run time)."""
    return {
        (account, scope, group, resource, name.replace("<release>", fullname) if name else None, verb)
        for account, scope, group, resource, name, verb, why in readme_rbac_rows()
        if applies(why, read_secrets, ebpf) and not scope.startswith("run time")
    }


def rendered_rbac(docs):
    """Every rule granted to the chart's ServiceAccounts, as (account, scope, group, resource,
    resource name, verb); scope is "cluster" (ClusterRole) or "namespace" (Role)."""
    roles = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in docs if doc["kind"] in ("Role", "ClusterRole")}
    granted = set()
    for _, binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        ref = binding["roleRef"]
        role = roles[(ref["kind"], ref["name"])]
        scope = "cluster" if binding["kind"] == "ClusterRoleBinding" else "namespace"
        assert binding["kind"] != "RoleBinding" or ref["kind"] == "Role"
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["namespace"] == NAMESPACE, subject
            fullname, _, account = subject["name"].rpartition("-")
            for rule in role["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for name in rule.get("resourceNames") or [None]:
                            for verb in rule["verbs"]:
                                granted.add((account, scope, group, resource, name, verb))
    return granted


@pytest.mark.parametrize("fullname", [RELEASE, "custom"])
def test_rbac_is_exactly_the_readme_table(fullname):
    docs = render({"fullnameOverride": fullname} if fullname != RELEASE else {})
    granted = rendered_rbac(docs)
    documented = expected_rbac(fullname)
    assert granted - documented == set(), "granted but not in README.md's RBAC table"
    assert documented - granted == set(), "in README.md's RBAC table but not granted"
    accounts = sorted(doc["metadata"]["name"] for doc in objects(docs, "ServiceAccount"))
    assert accounts == [f"{fullname}-operator", f"{fullname}-scraper"]
    assert workload(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == f"{fullname}-operator"
    assert workload(docs, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == f"{fullname}-scraper"


@pytest.mark.parametrize("read_secrets", [True, False])
def test_rbac_with_the_ebpf_daemonset_is_exactly_the_readme_table(read_secrets):
    docs = render({"ebpf": {"enabled": True}, "scraper": {"readSecrets": read_secrets}})
    assert rendered_rbac(docs) == expected_rbac(RELEASE, read_secrets=read_secrets, ebpf=True)
    accounts = sorted(doc["metadata"]["name"] for doc in objects(docs, "ServiceAccount"))
    assert accounts == [f"{RELEASE}-ebpf", f"{RELEASE}-operator", f"{RELEASE}-scraper"]
    # The chart gives it the shards to read and nothing else; the rest comes from the operator.
    assert {r for r in rendered_rbac(docs) if r[0] == "ebpf"} == {
        ("ebpf", "namespace", "", "configmaps", None, "list"),
        ("ebpf", "namespace", "", "configmaps", None, "watch"),
    }
    args = workload(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--ebpf-service-account={RELEASE}-ebpf" in args
    assert not any(a.startswith("--ebpf-service-account") for a in workload(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"])


@pytest.mark.parametrize("fullname", [RELEASE, "custom"])
def test_rbac_without_reading_secrets_is_exactly_the_readme_table(fullname):
    docs = render({"scraper": {"readSecrets": False}, "fullnameOverride": fullname})
    assert rendered_rbac(docs) == expected_rbac(fullname, read_secrets=False)
    assert not any("secrets" in rule for rule in rendered_rbac(docs))
    args = workload(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--scraper-secrets=false" in args


@pytest.mark.parametrize("read_secrets", [True, False])
def test_the_operator_holds_every_permission_it_grants_the_scraper_at_run_time(read_secrets):
    """RBAC refuses a Role granting more than its writer holds (without `escalate`, which the
    chart never gives): every run-time row of the table must be covered by the operator's own
    rules, in the release namespace or cluster-wide."""
    granted = rendered_rbac(render({"scraper": {"readSecrets": read_secrets}, "ebpf": {"enabled": True}}))
    run_time = [r for r in readme_rbac_rows() if r[1].startswith("run time") and applies(r[6], read_secrets, ebpf=True)]
    assert run_time, "the README lists what the operator grants at run time"
    assert {r[0] for r in run_time} == {"scraper", "ebpf"}
    for account, scope, group, resource, name, verb, why in run_time:
        assert account in ("scraper", "ebpf"), (account, scope)
        scopes = ["cluster"] if "every namespace" in scope else ["cluster", "namespace"]
        assert any(("operator", s, group, resource, None, verb) in granted for s in scopes), (resource, verb, scope)
    # And it may write those Roles, by name.
    for resource in ["roles", "rolebindings"]:
        for verb in ["patch", "list", "watch"]:
            assert any(
                r == ("operator", s, "rbac.authorization.k8s.io", resource, f"{RELEASE}-scraper-named", verb) for r in granted for s in ["cluster", "namespace"]
            ), (resource, verb)
    assert not any(r[3] in ("roles", "rolebindings", "clusterroles") and r[5] in ("escalate", "bind") for r in granted)


def test_the_operator_is_told_whose_access_it_maintains():
    docs = render({"fullnameOverride": "prof"})
    args = workload(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--scraper-service-account=prof-scraper" in args
    assert "--scraper-secrets=true" in args
    assert "--owner-cluster-role=prof-operator" in args
    assert "prof-operator" in [doc["metadata"]["name"] for doc in objects(docs, "ClusterRole")]


def test_the_scraper_may_not_write_a_shard_nor_read_a_secret_from_the_chart():
    """Shards are read-only to it; what it may write or read it gets by name from the operator."""
    for row in rendered_rbac(render()):
        account, scope, group, resource, name, verb = row
        if account == "scraper":
            assert (scope, resource, verb) in {("namespace", "configmaps", "list"), ("namespace", "configmaps", "watch")}, row


def test_no_wildcards_and_no_write_access_to_secrets_or_workloads():
    for row in rendered_rbac(render()):
        assert "*" not in row, row
        account, scope, group, resource, name, verb = row
        if resource == "secrets":
            assert verb == "get", row
        if group == "apps":
            assert verb == "get" and name, row


# --- objects --------------------------------------------------------------------------------


@pytest.mark.parametrize("k8s_version", ["1.25.0", "1.33.0"])
@pytest.mark.parametrize("values", [{}, EVERYTHING], ids=["defaults", "everything"])
def test_rendered_objects_are_valid_kubernetes(k8s_version, values):
    docs = render(values)
    for name, doc in docs:
        if doc["apiVersion"].startswith(("kubeprof.io/", "monitoring.coreos.com/")):
            continue  # custom resources: checked by their own tests below
        kubernetes_validate.validate(doc, k8s_version, strict=True)


def test_optional_objects_render_only_when_enabled():
    kinds = lambda docs: sorted(doc["kind"] for _, doc in docs)
    default = kinds(render())
    assert default == sorted(
        ["ServiceAccount"] * 2
        + ["ClusterRole"]
        + ["ClusterRoleBinding"]
        + ["Role"] * 2
        + ["RoleBinding"] * 2
        + ["Deployment", "DaemonSet", "PodDisruptionBudget"]
    )
    everything = kinds(render(EVERYTHING))
    for kind, count in [("Service", 2), ("ServiceMonitor", 2), ("NetworkPolicy", 2), ("ProfilingPolicy", 1)]:
        assert everything.count(kind) == count, (kind, everything)
    assert "PodDisruptionBudget" not in kinds(render({"operator": {"replicas": 1}}))
    assert "PodDisruptionBudget" not in kinds(render({"operator": {"podDisruptionBudget": {"enabled": False}}}))


def test_metrics_service_and_servicemonitor_select_each_component():
    docs = render(EVERYTHING)
    for component, port in [("operator", 9465), ("scraper", 9464)]:
        workload_kind = "Deployment" if component == "operator" else "DaemonSet"
        pod_labels = workload(docs, workload_kind)["spec"]["template"]["metadata"]["labels"]
        (service,) = [s for s in objects(docs, "Service") if s["metadata"]["labels"]["app.kubernetes.io/component"] == component]
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}]
        (monitor,) = [m for m in objects(docs, "ServiceMonitor") if m["metadata"]["labels"]["app.kubernetes.io/component"] == component]
        assert monitor["metadata"]["labels"]["release"] == "prom"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]


def test_network_policies_admit_only_the_metrics_port():
    docs = render(EVERYTHING)
    policies = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in objects(docs, "NetworkPolicy")}
    for component, policy in policies.items():
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        (rule,) = policy["spec"]["ingress"]
        assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
        assert {"namespaceSelector": {"matchLabels": {"team": "monitoring"}}} in rule["from"]
    scraper_selector = workload(docs, "DaemonSet")["spec"]["selector"]
    assert {"podSelector": scraper_selector} in policies["operator"]["spec"]["ingress"][0]["from"]
    # Without metricsFrom: the port from anywhere (a rule without `from`).
    open_policy = objects(render({"networkPolicy": {"enabled": True}}), "NetworkPolicy")
    assert all("from" not in p["spec"]["ingress"][0] for p in open_policy)


def test_extra_labels_annotations_and_pull_secrets_reach_every_object():
    docs = render(EVERYTHING)
    for _, doc in docs:
        assert doc["metadata"]["labels"]["team"] == "platform", doc["metadata"]
        assert doc["metadata"]["annotations"]["owner"] == "platform@example.com", doc["metadata"]
    for kind, spec in pod_specs(docs):
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        assert spec["priorityClassName"]
    for kind in ["Deployment", "DaemonSet"]:
        meta = workload(docs, kind)["spec"]["template"]["metadata"]
        assert meta["labels"]["a"] == "b" and meta["labels"]["team"] == "platform"
        assert meta["annotations"]["c"] == "d"


def test_operator_replicas_prefer_different_nodes_and_a_pdb_keeps_one():
    docs = render()
    deployment = workload(docs, "Deployment")
    term = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["labelSelector"] == deployment["spec"]["selector"]
    (pdb,) = objects(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}


@pytest.mark.parametrize("kube_version, api_version", [("v1.20.2", "policy/v1beta1"), ("v1.21.0", "policy/v1"), ("v1.33.0", "policy/v1")])
def test_pdb_api_version_follows_the_cluster(kube_version, api_version):
    """policy/v1 exists from 1.21; the chart supports 1.20 (see Chart.yaml's kubeVersion)."""
    (pdb,) = objects(render(kube_version=kube_version), "PodDisruptionBudget")
    assert pdb["apiVersion"] == api_version


def test_image_defaults_to_what_the_build_script_tags():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for kind, spec in pod_specs(render()):
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["image"] == f"kubeprof:{chart['appVersion']}", container["image"]
    custom = render({"image": {"repository": "registry.example.com/kubeprof", "tag": "dev"}})
    assert workload(custom, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/kubeprof:dev"


def test_default_policy_renders_as_a_profilingpolicy():
    docs = render({"defaultPolicy": {"create": True}})
    policy = next(doc for _, doc in docs if doc["kind"] == "ProfilingPolicy")
    assert policy["spec"]["sinks"][0]["file"]["directory"] == "/var/lib/kubeprof/profiles"


def test_chart_ships_the_generated_crds():
    for generated in sorted((REPO / "crds" / "yaml").glob("*.yaml")):
        shipped = CHART / "crds" / generated.name
        assert shipped.read_text() == generated.read_text(), f"run crdgen: {shipped} differs"


@pytest.mark.parametrize("kind", ["Deployment", "DaemonSet"])
def test_binaries_accept_the_arguments_the_chart_gives_them(kind):
    """A renamed flag would otherwise only show up as a CrashLoopBackOff after `helm install`.
    clap parses every argument before it acts on a trailing --help, so an unknown flag or a
    bad value fails here."""
    docs = render({"logFormat": "json"})
    container = (workload(docs, kind) if kind == "Deployment" else daemonset(docs, "scraper"))["spec"]["template"]["spec"]["containers"][0]
    binary = container["command"][0]
    env = {e["name"]: e.get("value", "test-value") for e in container.get("env", [])}
    run = subprocess.run(
        ["cargo", "run", "-q", "--locked", "-p", binary, "--bin", binary, "--", *container["args"], "--help"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, f"{binary} {' '.join(container['args'])}:\n{run.stderr}"


# --- the eBPF DaemonSet ---------------------------------------------------------------------

EBPF = {"ebpf": {"enabled": True}}


def daemonset(docs, component):
    (found,) = [d for d in objects(docs, "DaemonSet") if d["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    return found


def test_the_ebpf_daemonset_renders_only_when_enabled():
    assert [d["metadata"]["name"] for d in objects(render(), "DaemonSet")] == [f"{RELEASE}-scraper"]
    docs = render(EBPF)
    assert sorted(d["metadata"]["name"] for d in objects(docs, "DaemonSet")) == [f"{RELEASE}-ebpf", f"{RELEASE}-scraper"]


@pytest.mark.parametrize("values", [{}, EBPF], ids=["without-ebpf", "with-ebpf"])
def test_the_scraper_never_runs_ebpf(values):
    args = daemonset(render(values), "scraper")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--sources=pull" in args


def test_the_ebpf_daemonset_has_the_narrowest_privileges_that_load_the_program():
    spec = daemonset(render(EBPF), "ebpf")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == f"{RELEASE}-ebpf"
    assert spec["hostPID"] is True and not spec.get("hostNetwork") and not spec.get("hostIPC")
    pod = spec["securityContext"]
    # Root: Kubernetes sets no ambient capabilities, so a non-root user would lose them at exec.
    assert pod == {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = spec["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["BPF", "PERFMON", "SYS_PTRACE", "CHECKPOINT_RESTORE", "DAC_OVERRIDE", "SYSLOG"]},
    }
    args = container["args"]
    assert args[:3] == ["run", "--cluster", "--sources=ebpf"] and "--proc-root=/proc" in args
    assert "--ui=false" in args
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in container["env"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["cgroup"] == {"name": "cgroup", "mountPath": "/sys/fs/cgroup", "readOnly": True}
    assert volumes["cgroup"]["hostPath"] == {"path": "/sys/fs/cgroup", "type": "Directory"}
    # The scraper's file sink directory: profiles go to the shard's sinks.
    assert mounts["profiles"]["mountPath"] == "/var/lib/kubeprof"
    assert volumes["profiles"]["hostPath"] == {"path": "/var/lib/kubeprof", "type": "DirectoryOrCreate"}
    assert "emptyDir" in volumes[mounts["tmp"]["name"]]
    assert "initContainers" not in spec
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9463}]


def test_the_ebpf_daemonset_follows_its_values():
    docs = render(
        {
            "ebpf": {"enabled": True, "nodeSelector": {"kubeprof.io/ebpf": "true"}, "cgroupRoot": "/sys/fs/cgroup/unified", "tolerations": []},
            "scraper": {"fileSink": {"hostPath": ""}},
        }
    )
    spec = daemonset(docs, "ebpf")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"kubeprof.io/ebpf": "true"}
    assert "tolerations" not in spec
    assert "--cgroup-root=/sys/fs/cgroup/unified" in spec["containers"][0]["args"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "profiles"]
    assert volume == {"name": "profiles", "emptyDir": {"sizeLimit": "1Gi"}}


@pytest.mark.parametrize("k8s_version", ["1.25.0", "1.33.0"])
def test_the_ebpf_objects_are_valid_kubernetes(k8s_version):
    for name, doc in render({**EVERYTHING, **EBPF}):
        if doc["apiVersion"].startswith(("kubeprof.io/", "monitoring.coreos.com/")):
            continue
        kubernetes_validate.validate(doc, k8s_version, strict=True)


def test_extra_labels_annotations_and_pull_secrets_reach_the_ebpf_objects():
    values = {**EVERYTHING, "ebpf": {"enabled": True, "priorityClassName": "node-critical", "podLabels": {"a": "b"}, "podAnnotations": {"c": "d"}}}
    docs = render(values)
    for _, doc in docs:
        assert doc["metadata"]["labels"]["team"] == "platform", doc["metadata"]
    ds = daemonset(docs, "ebpf")
    spec = ds["spec"]["template"]["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}] and spec["priorityClassName"] == "node-critical"
    assert ds["spec"]["template"]["metadata"]["labels"]["a"] == "b"
    assert ds["spec"]["template"]["metadata"]["annotations"]["c"] == "d"
    assert ds["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "ebpf"


def test_the_ebpf_binary_accepts_the_arguments_the_chart_gives_it():
    container = daemonset(render(EBPF), "ebpf")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "test-value") for e in container.get("env", [])}
    run = subprocess.run(
        ["cargo", "run", "-q", "--locked", "-p", "kubeprof-scraper", "--bin", "kubeprof-scraper", "--", *container["args"], "--help"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, f"{' '.join(container['args'])}:\n{run.stderr}"
