#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of the workspace (unit, mock API
# server, e2e).
#
# The e2e tests run against a real API server: $KUBECONFIG (an existing cluster), or etcd and
# kube-apiserver from $KUBEBUILDER_ASSETS, or the cache that scripts/build-kube-apiserver.sh
# fills. Without any of those they print one SKIPPED line each and pass.
set -euo pipefail
cd "$(dirname "$0")/.."

default_assets="${KUBEPROF_CACHE:-$HOME/.cache/kubeprof}/k8s-1.20.2/bin"
if [ -z "${KUBECONFIG:-}" ] && [ -z "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$default_assets/kube-apiserver" ]; then
  export KUBEBUILDER_ASSETS="$default_assets"
fi
echo "test.sh: KUBECONFIG=${KUBECONFIG:-<unset>} KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS:-<unset>}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo run -q --locked -p kubeprof-crds --bin crdgen -- --check
if python3 -c 'import helm_python, kubernetes_validate, pytest, yaml' 2>/dev/null; then
  python3 -m pytest -q charts/tests
else
  echo "SKIPPED chart tests: pip install -r charts/tests/requirements.txt (Helm's engine and the Kubernetes schemas)"
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole workspace (cargo prints one per test binary, the last often
# being an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "total: %d passed, %d failed\n", p, f }' "$log"
