"""helm install / upgrade / uninstall of the kubeprof chart with Helm's own engine
(helm-python-sdk, which links Helm 4's Go SDK: no helm binary needed), for the real-node e2e test.

    python3 e2e/helm/release.py install   --kubeconfig K --namespace NS --release R --values JSON
    python3 e2e/helm/release.py upgrade   --kubeconfig K --namespace NS --release R --values JSON
    python3 e2e/helm/release.py uninstall --kubeconfig K --namespace NS --release R

Prints the release summary (name, namespace, revision, status, ...) as one JSON line. Exits 3 with a
hint when helm-python-sdk is missing (pip install -r charts/tests/requirements.txt).

`install` is `helm install --skip-crds --create-namespace --wait`: Helm 4 creates a chart's CRDs
by server-side apply, which servers before 1.25 refuse for the CRDs' x-kubernetes-validations
("field not declared in schema"), so the CRDs are created beforehand with
`kubectl create --validate=false -f crds/yaml/` (as the README says).
"""
import argparse
import json
import pathlib
import sys

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts" / "kubeprof"


def install(cfg, release, namespace, values, timeout):
    # helm-python-sdk 0.2.2's Config.install has no skip_crds parameter, although the native
    # helm_install it wraps takes it (InstallOptions.SkipCRDs): the same call, with that option.
    from helm_python import _native

    payload = _native.call_string(
        "helm_install",
        cfg._raw(),
        _native.HANDLE(0),  # no cancellation context
        _native.HANDLE(0),  # the chart by reference, not a loaded handle
        str(CHART),
        release,
        json.dumps(values),
        json.dumps(
            {
                "namespace": namespace,
                "create_namespace": True,
                "skip_crds": True,
                "wait": "watcher",
                "timeout_seconds": timeout,
            }
        ),
    )
    return json.loads(payload)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["install", "upgrade", "uninstall"])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--release", required=True)
    parser.add_argument("--values", default="{}", help="values as JSON")
    parser.add_argument("--timeout", type=int, default=180, help="seconds to wait for readiness")
    args = parser.parse_args()
    try:
        import helm_python as helm
    except ImportError as e:
        print(f"helm-python-sdk is not installed ({e}): pip install -r charts/tests/requirements.txt", file=sys.stderr)
        return 3
    values = json.loads(args.values)
    try:
        rel = run(helm, args, values)
    except helm.HelmError as e:
        print(f"helm {args.action} {args.release}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    rel.pop("manifest", None)
    print(json.dumps(rel))
    return 0


def run(helm, args, values):
    with helm.Config(kubeconfig_path=args.kubeconfig, namespace=args.namespace) as cfg:
        if args.action == "install":
            rel = install(cfg, args.release, args.namespace, values, args.timeout)
        elif args.action == "upgrade":
            rel = cfg.upgrade(
                str(CHART), args.release, values, namespace=args.namespace,
                wait="watcher", timeout=args.timeout,
            )
        else:
            rel = cfg.uninstall(args.release, wait="watcher", timeout=args.timeout)
            rel = rel.get("release", rel)
    return rel


if __name__ == "__main__":
    sys.exit(main())
