#!/usr/bin/env bash
# Builds the container images without pulling any base image, and exports each as an OCI archive
# for `ctr images import` (scripts/real-node.sh imports them when the node runs):
#
#   kubeprof   kubeprof:<appVersion>, the chart's default image: the Containerfile at the
#              repository's root, both binaries (cargo build --profile dist) on the libraries
#              they load (glibc, libgcc), the CA bundle and `chown` (the chart's init
#              container), unpacked from the Debian packages this machine has; non-root, no shell
#   pprofdemo     kubeprof-e2e/pprofdemo:latest      e2e/go/pprofdemo.Containerfile: the Go pprof
#                 service of the e2e tests
#   pushreceiver  kubeprof-e2e/pushreceiver:latest   e2e/go/pushreceiver.Containerfile: a Pyroscope
#                 push receiver for the real-node test (what arrived, as JSON)
#   (both Go images: one static binary, CGO_ENABLED=0, standard library only, FROM scratch)
#
#   scripts/build-image.sh [kubeprof|pprofdemo|pushreceiver]...     # default: all three
#
# Archives: $KUBEPROF_CACHE/images/<name>.oci.tar (default ~/.cache/kubeprof/images). Builds with
# Debian's buildah (`--storage-driver vfs`, as root); with KUBEPROF_IMAGE_BUILDER=docker it runs
# `docker build` on the same context instead (the context is prepared with apt-get download, so
# on Debian or Ubuntu). The kubeprof image's tag: $KUBEPROF_IMAGE_TAG (default: the chart's
# appVersion).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

cache="${KUBEPROF_CACHE:-$HOME/.cache/kubeprof}"
out_dir="$cache/images"
app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/kubeprof/Chart.yaml)
tag="${KUBEPROF_IMAGE_TAG:-$app_version}"
builder="${KUBEPROF_IMAGE_BUILDER:-buildah}"
# Cargo.toml's `dist` profile: release, with link-time optimisation (smaller binaries).
profile="${KUBEPROF_IMAGE_PROFILE:-dist}"
log() { printf '[build-image] %s\n' "$*" >&2; }

bah() { buildah --storage-driver vfs "$@"; }

# Builds CONTEXT with FILE as IMAGE and writes the OCI archive OUT.
build() {
  local file=$1 context=$2 image=$3 out=$4
  mkdir -p "$(dirname "$out")"
  rm -f "$out.tmp"
  case "$builder" in
    buildah)
      # --layers=false: one layer per COPY, no intermediate images kept in vfs storage.
      bah bud --quiet --layers=false -f "$file" -t "$image" "$context" >/dev/null
      bah push --quiet "$image" "oci-archive:$out.tmp:$image"
      # vfs keeps a full copy per image: drop the one this build replaced.
      bah rmi --prune >/dev/null 2>&1 || true
      ;;
    docker)
      docker build -q -f "$file" -t "$image" "$context" >/dev/null
      # docker's own export is a docker archive, which `ctr images import` also reads.
      docker save -o "$out.tmp" "$image"
      ;;
    *) log "KUBEPROF_IMAGE_BUILDER: buildah or docker, not $builder"; exit 2 ;;
  esac
  mv "$out.tmp" "$out"
  log "$image -> $out ($(du -h "$out" | cut -f1))"
  # Import at once when the real node runs, so a rebuilt image is what the next pod gets.
  if scripts/real-node.sh status >/dev/null 2>&1; then
    scripts/real-node.sh import "$out"
  fi
}

# Prints the path under ROOT (relative) of the regular file that REL leads to, following
# symlinks within ROOT and trying the /usr-merged twin of each path.
unpacked_file() {
  local root=$1 rel=$2 target hops=0
  while [ $hops -lt 16 ]; do
    hops=$((hops + 1))
    if [ ! -e "$root/$rel" ] && [ ! -L "$root/$rel" ]; then
      case $rel in
        usr/*) rel=${rel#usr/} ;;
        *) rel=usr/$rel ;;
      esac
      [ -e "$root/$rel" ] || [ -L "$root/$rel" ] || return 1
    fi
    if [ -L "$root/$rel" ]; then
      target=$(readlink "$root/$rel")
      case $target in
        /*) rel=${target#/} ;;
        *) rel=$(dirname "$rel")/$target ;;
      esac
      continue
    fi
    [ -f "$root/$rel" ] && { echo "$rel"; return 0; }
    return 1
  done
  return 1
}

kubeprof() {
  local t0=$SECONDS
  local context="$repo/target/image/kubeprof"
  local rootfs="$context/rootfs"
  log "cargo build --profile $profile (kubeprof-operator, kubeprof-scraper)"
  cargo build --profile "$profile" --locked -p kubeprof-operator -p kubeprof-scraper \
    --bin kubeprof-operator --bin kubeprof-scraper >&2
  local dir=$profile
  [ "$profile" != dev ] || dir=debug
  # Where cargo put them: $CARGO_TARGET_DIR when set (a shared, warm target directory).
  local target="${CARGO_TARGET_DIR:-target}"
  local bins=("$target/$dir/kubeprof-operator" "$target/$dir/kubeprof-scraper")
  log "cargo build: $((SECONDS - t0)) s"

  rm -rf "$context"
  mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$context/debs" "$context/unpacked"
  install -m 0755 "${bins[@]}" "$rootfs/usr/local/bin/"

  # The runtime files come from the Debian packages of the glibc the binaries were linked
  # against (the same version as the build machine's), unpacked, not installed.
  # The shared objects the binaries and chown load (ldd), and the packages that ship them here.
  local libs lib owner debs=(ca-certificates coreutils)
  libs=$(ldd "${bins[@]}" /bin/chown | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $1 !~ /:$/ {print $1}' | sort -u)
  for lib in $libs; do
    # usr-merged hosts: ldd may say /lib/... for a package that ships /usr/lib/... and back.
    owner=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "${lib#/usr}" 2>/dev/null || dpkg -S "/usr$lib" 2>/dev/null) ||
      { log "$lib: in no Debian package"; exit 1; }
    owner=${owner%%:*}
    [[ " ${debs[*]} " == *" $owner "* ]] || debs+=("$owner")
  done
  local pkgs=() p v
  for p in "${debs[@]}"; do
    v=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null) || v=""
    pkgs+=("$p${v:+=$v}")
  done
  (cd "$context/debs" && apt-get -qq -o APT::Sandbox::User=root download "${pkgs[@]}" >&2)
  for deb in "$context"/debs/*.deb; do
    dpkg-deb -x "$deb" "$context/unpacked"
  done
  # A package whose doc folder links to another package's (libgcc-s1 -> gcc-12-base) has its
  # copyright there.
  local doc more=()
  for p in "${debs[@]}"; do
    doc=$(readlink "$context/unpacked/usr/share/doc/$p" || true)
    [ -z "$doc" ] || more+=("$doc")
  done
  if [ ${#more[@]} -gt 0 ]; then
    (cd "$context/debs" && apt-get -qq -o APT::Sandbox::User=root download "${more[@]}" >&2)
    for p in "${more[@]}"; do
      dpkg-deb -x "$context/debs/${p}"_*.deb "$context/unpacked"
    done
  fi

  # The chart's init container gives the file sink's hostPath to the image's user with it.
  install -D -m 0755 "$context/unpacked/bin/chown" "$rootfs/usr/bin/chown"
  # Only those shared objects, each as a plain file at the path ldd found it (the loader looks
  # there), taken from the unpacked packages: symlinks are followed inside the unpacked tree,
  # relative ones from their own folder, and a path missing there is tried with and without
  # /usr (usr-merged hosts and packages disagree on which one they name).
  local rel
  for lib in $libs; do
    rel=$(unpacked_file "$context/unpacked" "${lib#/}") || { log "$lib: not in ${pkgs[*]}"; exit 1; }
    mkdir -p "$rootfs$(dirname "$lib")"
    cp "$context/unpacked/$rel" "$rootfs$lib"
  done
  # The bundle update-ca-certificates would write: every Mozilla certificate, concatenated.
  cat "$context"/unpacked/usr/share/ca-certificates/mozilla/*.crt >"$rootfs/etc/ssl/certs/ca-certificates.crt"
  for p in "${debs[@]}"; do
    doc=$(readlink -f "$context/unpacked/usr/share/doc/$p" | sed "s|^$context/unpacked||")
    install -D -m 0644 "$context/unpacked/$doc/copyright" "$rootfs/usr/share/doc/$p/copyright"
  done
  printf 'root:x:0:0:root:/root:/nonexistent\nnonroot:x:65532:65532:nonroot:/home/nonroot:/nonexistent\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
  chmod 1777 "$rootfs/tmp"
  rm -rf "$context/debs" "$context/unpacked"
  log "rootfs: $(du -sh "$rootfs" | cut -f1) (binaries: $(du -ch "${bins[@]}" | tail -n1 | cut -f1))"

  # Fully qualified, as containerd's CRI looks images up: `kubeprof:0.1.0` in a pod spec.
  build Containerfile "$context" "docker.io/library/kubeprof:$tag" "$out_dir/kubeprof.oci.tar"
  log "kubeprof image: $((SECONDS - t0)) s"
}

# A Go program of e2e/go/ (NAME.go, NAME.Containerfile) as kubeprof-e2e/NAME:latest.
go_image() {
  local name=$1
  local context="$repo/target/image/$name"
  rm -rf "$context"
  mkdir -p "$context"
  # Static and reproducible: no cgo, no build paths in the binary; module mode off (one file,
  # standard library only).
  (cd e2e/go && CGO_ENABLED=0 GO111MODULE=off GOCACHE="$repo/target/go-cache" \
    go build -trimpath -o "$context/$name" "$name.go")
  cp "e2e/go/$name.Containerfile" "$context/Containerfile"
  build "$context/Containerfile" "$context" "docker.io/kubeprof-e2e/$name:latest" "$out_dir/$name.oci.tar"
}

[ "$builder" != buildah ] || [ "$(id -u)" = 0 ] || { log "buildah with vfs storage needs root here"; exit 1; }
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(kubeprof pprofdemo pushreceiver)
for t in "${targets[@]}"; do
  case "$t" in
    kubeprof) kubeprof ;;
    pprofdemo | pushreceiver) go_image "$t" ;;
    *) log "unknown image $t (kubeprof, pprofdemo, pushreceiver)"; exit 2 ;;
  esac
done
