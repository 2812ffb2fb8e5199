#!/usr/bin/env bash
# Builds kube-apiserver 1.20.2 from Debian bookworm's source package `kubernetes` and puts it,
# with Debian's etcd, in an envtest-style assets folder outside the repository.
#
#   scripts/build-kube-apiserver.sh            # prints the assets folder on its last line
#   export KUBEBUILDER_ASSETS=$(scripts/build-kube-apiserver.sh | tail -n1)
#
# The build takes ~15 min on 2 cores and runs once: later calls find the cached binary.
# Cache root: $KUBEPROF_CACHE (default ~/.cache/kubeprof).
set -euo pipefail

cache="${KUBEPROF_CACHE:-$HOME/.cache/kubeprof}"
assets="$cache/k8s-1.20.2/bin"
log() { printf '[build-kube-apiserver] %s\n' "$*" >&2; }

apt_ready=""
apt_install() {
  if [ -z "$apt_ready" ]; then
    if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
      log "adding a deb-src line for bookworm"
      cat > /etc/apt/sources.list.d/kubeprof-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    apt_ready=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

mkdir -p "$assets"

if [ ! -x "$assets/etcd" ]; then
  command -v etcd >/dev/null 2>&1 || apt_install etcd-server
  ln -sf "$(command -v etcd)" "$assets/etcd"
fi

if [ ! -x "$assets/kube-apiserver" ]; then
  apt_install golang-1.19-go rsync make dpkg-dev golang-github-modern-go-reflect2-dev
  src_root="$cache/src"
  mkdir -p "$src_root"
  cd "$src_root"
  tree=$(find . -maxdepth 1 -type d -name 'kubernetes-1.20*' | head -n1)
  if [ -z "$tree" ]; then
    log "fetching Debian source package kubernetes"
    apt-get source -qq kubernetes >&2
    tree=$(find . -maxdepth 1 -type d -name 'kubernetes-1.20*' | head -n1)
  fi
  [ -n "$tree" ] || { log "no kubernetes-1.20* tree after apt-get source"; exit 1; }
  cd "$tree"
  # reflect2 1.0.1 (vendored) breaks on Go >= 1.18; Debian ships 1.0.2.
  reflect2_src=/usr/share/gocode/src/github.com/modern-go/reflect2
  rsync -a --delete --exclude '.git' "$reflect2_src/" vendor/github.com/modern-go/reflect2/
  # The Go build cache lives beside the tree so that both go once the binary is out.
  export PATH="/usr/lib/go-1.19/bin:$PATH" GOFLAGS=-mod=vendor GO111MODULE=on GOCACHE="$cache/go-build"
  log "make generated_files (go: $(go version))"
  make generated_files >&2
  log "make WHAT=cmd/kube-apiserver"
  make WHAT=cmd/kube-apiserver >&2
  cp _output/bin/kube-apiserver "$assets/kube-apiserver.tmp"
  mv "$assets/kube-apiserver.tmp" "$assets/kube-apiserver"
  # The tree and the build cache take gigabytes that a CI machine's disk may not have spare
  # for the Rust build that follows; only the binary is kept.
  cd "$cache"
  log "removing the source tree and the Go build cache ($(du -sh "$src_root" "$GOCACHE" 2>/dev/null | awk '{print $1}' | paste -sd+ -))"
  chmod -R u+w "$src_root" "$GOCACHE" 2>/dev/null || true
  rm -rf "$src_root" "$GOCACHE"
fi

"$assets/kube-apiserver" --version >&2 || true
echo "$assets"
