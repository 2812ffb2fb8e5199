"""The Helm chart, with Helm's own engine (helm-python-sdk) and the Kubernetes schemas
(kubernetes-validate): it lints, renders with default and non-default values, every rendered
object is valid for the oldest Kubernetes the validator knows (1.25) and a current one, and it ships the generated CRDs."""
import os
import pathlib
import subprocess

import helm_python
import kubernetes_validate
import pytest
import yaml

CHART = pathlib.Path(__file__).resolve().parents[1] / "kubeprof"
REPO = CHART.parents[1]


def render(values=None):
    chart = helm_python.Chart.load(str(CHART))
    try:
        out = chart.render(values or {}, name="kp", namespace="kubeprof", is_install=True)
    finally:
        chart.close()
    docs = []
    for name, text in sorted(out.items()):
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((name, doc))
    return docs


def test_lint_is_clean():
    result = helm_python.lint(str(CHART), strict=True)
    # Helm's severities: 1 info, 2 warning, 3 error.
    messages = [m for m in result["messages"] if m["severity"] >= 2]
    assert not messages and not result["errors"], result


@pytest.mark.parametrize("k8s_version", ["1.25.0", "1.33.0"])
def test_rendered_objects_are_valid_kubernetes(k8s_version):
    docs = render({"defaultPolicy": {"create": False}})
    kinds = sorted(doc["kind"] for _, doc in docs)
    assert kinds.count("Deployment") == 1 and kinds.count("DaemonSet") == 1, kinds
    for name, doc in docs:
        kubernetes_validate.validate(doc, k8s_version, strict=True)


def test_scraper_gets_its_node_name_and_secrets_rbac_is_optional():
    docs = render()
    daemonset = next(doc for _, doc in docs if doc["kind"] == "DaemonSet")
    env = daemonset["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in env
    assert any(doc["kind"] == "ClusterRole" and doc["metadata"]["name"].endswith("scraper-secrets") for _, doc in docs)
    without = render({"scraper": {"readSecrets": False}})
    assert not any(doc["metadata"]["name"].endswith("scraper-secrets") for _, doc in without)


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
    workload = next(doc for _, doc in docs if doc["kind"] == kind)
    container = workload["spec"]["template"]["spec"]["containers"][0]
    binary = container["command"][0]
    env = {e["name"]: "test-value" for e in container.get("env", [])}
    run = subprocess.run(
        ["cargo", "run", "-q", "--locked", "-p", binary, "--bin", binary, "--", *container["args"], "--help"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, f"{binary} {' '.join(container['args'])}:\n{run.stderr}"
