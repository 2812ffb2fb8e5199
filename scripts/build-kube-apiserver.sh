#!/usr/bin/env bash
# Builds Kubernetes 1.20.2 from Debian bookworm's source package `kubernetes` into an
# envtest-style assets folder outside the repository, with Debian's etcd beside it.
#
#   scripts/build-kube-apiserver.sh          # kube-apiserver + etcd (the e2e tests' API server)
#   scripts/build-kube-apiserver.sh --node   # also kubelet, kube-controller-manager,
#                                            # kube-scheduler, kube-proxy and pause (a real node,
#                                            # scripts/real-node.sh)
#   export KUBEBUILDER_ASSETS=$(scripts/build-kube-apiserver.sh | tail -n1)
#
# The assets folder is printed on the last line. One `make` builds every missing binary
# (~15 min on 2 cores for one or all five: they share most packages) and runs once: later calls
# find the cached binaries. Cache root: $KUBEPROF_CACHE (default ~/.cache/kubeprof).
set -euo pipefail

cache="${KUBEPROF_CACHE:-$HOME/.cache/kubeprof}"
assets="$cache/k8s-1.20.2/bin"
log() { printf '[build-kube] %s\n' "$*" >&2; }

node=""
case "${1:-}" in
  "") ;;
  --node) node=1 ;;
  *) log "usage: $0 [--node]"; exit 2 ;;
esac

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

commands=(kube-apiserver)
[ -z "$node" ] || commands+=(kubelet kube-controller-manager kube-scheduler kube-proxy)
missing=()
for c in "${commands[@]}"; do
  [ -x "$assets/$c" ] || missing+=("$c")
done
# pause.c is in the same tree: keep it when the tree is there anyway.
[ -z "$node" ] || [ -x "$assets/pause" ] || missing+=(pause)

if [ ${#missing[@]} -gt 0 ]; then
  apt_install golang-1.19-go rsync make gcc libc6-dev dpkg-dev golang-github-modern-go-reflect2-dev
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
  # Kubernetes' make sets GOCACHE itself (_output/local/go/cache, inside the tree), so the
  # cache goes with the tree below.
  export PATH="/usr/lib/go-1.19/bin:$PATH" GOFLAGS=-mod=vendor GO111MODULE=on
  what=()
  for c in "${missing[@]}"; do
    [ "$c" = pause ] || what+=("cmd/$c")
  done
  if [ ${#what[@]} -gt 0 ]; then
    log "make generated_files (go: $(go version))"
    make generated_files >&2
    # One make for all of them: the five commands share most of their packages.
    log "make WHAT=\"${what[*]}\""
    make WHAT="${what[*]}" >&2
    for w in "${what[@]}"; do
      c=${w#cmd/}
      cp "_output/bin/$c" "$assets/$c.tmp"
      mv "$assets/$c.tmp" "$assets/$c"
    done
  fi
  if [[ " ${missing[*]} " == *" pause "* ]]; then
    # The pod sandbox's process, as build/pause/Makefile builds it (no image registry here).
    gcc -Os -Wall -Werror -static -DVERSION=v3.4.1-debian-kubernetes-1.20.2 \
      -o "$assets/pause.tmp" build/pause/linux/pause.c
    strip "$assets/pause.tmp"
    mv "$assets/pause.tmp" "$assets/pause"
  fi
  # The tree and its build cache take gigabytes that a CI machine's disk may not have spare
  # for the Rust build that follows; only the binaries are kept.
  cd "$cache"
  log "removing the source tree and its Go build cache ($(du -sh "$src_root" 2>/dev/null | awk '{print $1}'))"
  chmod -R u+w "$src_root" 2>/dev/null || true
  rm -rf "$src_root" "$cache/go-build"
fi

for c in "${commands[@]}"; do
  "$assets/$c" --version >&2 || true
done
echo "$assets"
