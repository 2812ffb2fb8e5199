#!/usr/bin/env bash
# A real single-node Kubernetes 1.20.2 cluster on this machine, from Debian packages only: the
# control plane and kubelet built from Debian's `kubernetes` source package
# (scripts/build-kube-apiserver.sh --node), containerd + runc running real containers, bridge +
# host-local CNI on a private /24, kube-proxy in iptables mode, Debian's etcd. No image registry:
# images are OCI archives imported into containerd; pods use imagePullPolicy: Never.
#
#   scripts/real-node.sh start            # builds the binaries once (~15 min), then ~30 s
#   scripts/real-node.sh import FILE...   # OCI archives (scripts/build-image.sh makes them)
#   scripts/real-node.sh status           # prints the admin kubeconfig when the node is Ready
#   scripts/real-node.sh stop             # removes everything start created or changed
#
# Needs root on Debian bookworm (cgroup v1 or hybrid). The admin kubeconfig is
# $KUBEPROF_NODE_DIR/kubeconfig (default ~/.cache/kubeprof/node/kubeconfig); the e2e test
# e2e/tests/real_node/ finds it there (or in $KUBEPROF_NODE_KUBECONFIG). The API server binds to
# the bridge address only (pods reach it there and through the `kubernetes` Service), every other
# port to 127.0.0.1 or the bridge: nothing listens on the machine's own interfaces.
#
# What it changes on the host, all undone by `stop`: the bridge kubeprof0 with 10.88.0.1/24;
# KUBE-* and CNI-* iptables chains; sysctls net.ipv4.ip_forward (set here),
# vm.overcommit_memory, kernel.panic, kernel.panic_on_oops (kubelet),
# net.ipv4.conf.all.route_localnet (kube-proxy); cgroups under kubepods/; /var/log/pods and
# /var/log/containers (kubelet 1.20 always writes pod logs there).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${KUBEPROF_CACHE:-$HOME/.cache/kubeprof}"
assets="$cache/k8s-1.20.2/bin"
state="${KUBEPROF_NODE_DIR:-$cache/node}"
# containerd's sockets and task state must be on a filesystem without noexec restrictions and
# short enough for a unix socket path.
run=/run/kubeprof-node
sock="$run/containerd.sock"
node=kubeprof-node
bridge=kubeprof0
subnet=10.88.0.0/24
ip=10.88.0.1
service_range=10.96.0.0/24
service_ip=10.96.0.1
etcd_port=12379
pause_image=k8s.gcr.io/pause:3.2
sysctls=(net.ipv4.ip_forward vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.conf.all.route_localnet)

log() { printf '[real-node] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
kc() { kubectl --kubeconfig "$state/admin.kubeconfig" "$@"; }
ctr_() { ctr --connect-timeout 1s -a "$sock" -n k8s.io "$@"; }

# Whether the process of a pid file runs. A killed child stays a zombie until this machine's
# init reaps it (seconds on some VMs): a zombie counts as gone.
alive() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -e "/proc/$pid" ] || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

# Starts a component in its own session, logging to $state/logs/NAME.log.
launch() {
  local name=$1
  shift
  setsid "$@" >>"$state/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$state/pids/$name.pid"
}

stop_pid() {
  local file=$1 pid
  alive "$file" || { rm -f "$file"; return 0; }
  pid=$(cat "$file")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    alive "$file" || break
    sleep 0.2
  done
  if alive "$file"; then
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$file"
}

wait_for() {
  local what=$1 seconds=$2
  shift 2
  for _ in $(seq 1 $((seconds * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "$what: not within ${seconds}s (logs: $state/logs/)"
}

# --- PKI -----------------------------------------------------------------------------------
cert() { # name subject extensions
  local name=$1 subj=$2 ext=$3
  openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
  printf '%s\n' "$ext" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

kubeconfig() { # file cert-name
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $node
  cluster: {server: "https://$ip:6443", certificate-authority: "$state/pki/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$state/pki/$2.crt", client-key: "$state/pki/$2.key"}
contexts:
- name: $node
  context: {cluster: $node, user: $2}
current-context: $node
EOF
  chmod 600 "$1"
}

make_pki() {
  [ -f "$state/pki/ca.crt" ] && return 0
  mkdir -p "$state/pki"
  (
    cd "$state/pki"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=kubeprof-node-ca" 2>/dev/null
    local client="extendedKeyUsage=clientAuth"
    cert apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth
subjectAltName=IP:$service_ip,IP:$ip,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    cert admin "/O=system:masters/CN=kubeprof-node-admin" "$client"
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
    cert controller-manager "/CN=system:kube-controller-manager" "$client"
    cert scheduler "/CN=system:kube-scheduler" "$client"
    cert kubelet "/O=system:nodes/CN=system:node:$node" "$client"
    cert kube-proxy "/CN=system:kube-proxy" "$client"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

write_kubeconfigs() {
  local c
  for c in controller-manager scheduler kubelet kube-proxy; do
    kubeconfig "$state/$c.kubeconfig" "$c"
  done
}

# --- configuration files -------------------------------------------------------------------
write_configs() {
  mkdir -p "$state/cni" "$state/kubelet"
  cat >"$state/cni/10-kubeprof.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kubeprof",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$state/cni-ipam",
        "ranges": [[{"subnet": "$subnet", "gateway": "$ip"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat >"$state/containerd.toml" <<EOF
version = 2
root = "$state/containerd"
state = "$run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$run/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  # Root here may lack CAP_SYS_RESOURCE (some VMs): a negative oom_score_adj (pause of a
  # Guaranteed pod gets -998) then fails with "can't get final child's PID from pipe: EOF".
  # Clamping to containerd's own score avoids it.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni"
EOF
  cat >"$state/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$state/pki/ca.crt"}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failSwapOn: false
# Imported images are in no registry: garbage collection must never remove them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# A shared machine's disk and memory are not this node's to defend.
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%"}
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
EOF
}

# --- host changes --------------------------------------------------------------------------
save_sysctls() {
  [ -f "$state/sysctls.saved" ] && return 0
  local s
  for s in "${sysctls[@]}"; do
    printf '%s=%s\n' "$s" "$(sysctl -n "$s")"
  done >"$state/sysctls.saved"
}

restore_sysctls() {
  [ -f "$state/sysctls.saved" ] || return 0
  local line
  while IFS= read -r line; do
    sysctl -q -w "$line" >/dev/null || log "could not restore $line"
  done <"$state/sysctls.saved"
  rm -f "$state/sysctls.saved"
}

# Removes every KUBE-* and CNI-* chain (kube-proxy's, kubelet's, the CNI plugins') and the
# rules that jump to them. `kube-proxy --cleanup` leaves kubelet's KUBE-FIREWALL behind, which
# drops non-loopback packets to 127.0.0.0/8.
clean_iptables() {
  local cmd table rule chain
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for table in filter nat mangle; do
      "$cmd" -t "$table" -S >/dev/null 2>&1 || continue
      { "$cmd" -t "$table" -S | grep -E '^-A [^ ]+ .*-j (KUBE|CNI)-' | grep -vE '^-A (KUBE|CNI)-' || true; } |
        while IFS= read -r rule; do
          eval "$cmd -t $table -D ${rule#-A }" || true
        done
      for chain in $("$cmd" -t "$table" -S | awk '/^-N (KUBE|CNI)-/ {print $2}'); do
        "$cmd" -t "$table" -F "$chain" || true
      done
      for chain in $("$cmd" -t "$table" -S | awk '/^-N (KUBE|CNI)-/ {print $2}'); do
        "$cmd" -t "$table" -X "$chain" || true
      done
    done
  done
}

# --- start ---------------------------------------------------------------------------------
start() {
  [ "$(id -u)" = 0 ] || die "needs root (containers, cgroups, iptables)"
  if [ -f "$state/kubeconfig" ] && alive "$state/pids/kubelet.pid" 2>/dev/null; then
    log "already running"
    status
    return 0
  fi
  "$here/build-kube-apiserver.sh" --node >/dev/null
  local t0=$SECONDS
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy pause; do
    [ -x "$assets/$b" ] || die "no $assets/$b: run scripts/build-kube-apiserver.sh --node"
  done
  for b in etcd containerd containerd-shim-runc-v2 runc ctr iptables openssl kubectl buildah; do
    command -v "$b" >/dev/null || die "no $b on PATH: apt-get install etcd-server containerd runc containernetworking-plugins iptables openssl buildah (kubectl: kubernetes-client)"
  done
  for b in bridge host-local portmap loopback; do
    [ -x "/usr/lib/cni/$b" ] || die "no CNI plugin $b: apt-get install containernetworking-plugins"
  done

  mkdir -p "$state/logs" "$state/pids" "$run"
  chmod 700 "$state"
  make_pki
  write_kubeconfigs
  write_configs
  kubeconfig "$state/admin.kubeconfig" admin
  save_sysctls
  [ -d /var/log/pods ] || touch "$state/created-var-log-pods"
  [ -d /var/log/containers ] || touch "$state/created-var-log-containers"
  sysctl -q -w net.ipv4.ip_forward=1

  # The API server binds to the bridge address, so the bridge (which the CNI plugin adopts)
  # must exist first.
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
  fi
  ip addr replace "$ip/24" dev "$bridge"
  ip link set "$bridge" up

  if [ -S "$sock" ] && ctr --connect-timeout 1s -a "$sock" version >/dev/null 2>&1; then
    die "a containerd already serves $sock: scripts/real-node.sh stop first"
  fi
  launch containerd containerd --config "$state/containerd.toml"
  launch etcd etcd --name "$node" --data-dir "$state/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-cluster "$node=http://127.0.0.1:$((etcd_port + 1))" --unsafe-no-fsync
  local p="$state/pki"
  launch kube-apiserver "$assets/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --advertise-address="$ip" --bind-address="$ip" --secure-port=6443 --insecure-port=0 \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" \
    --kubelet-client-certificate="$p/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$p/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range="$service_range" \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --enable-admission-plugins=NodeRestriction \
    --cert-dir="$state/apiserver-certs"
  wait_for "containerd" 20 ctr_ version
  import_images "$(pause_archive)"
  wait_for "kube-apiserver /readyz" 60 kc get --raw /readyz

  launch kube-controller-manager "$assets/kube-controller-manager" \
    --kubeconfig="$state/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$state/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$state/controller-manager.kubeconfig" \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --use-service-account-credentials=true --service-cluster-ip-range="$service_range" \
    --leader-elect=false --port=0 --bind-address=127.0.0.1 --secure-port=10257
  launch kube-scheduler "$assets/kube-scheduler" \
    --kubeconfig="$state/scheduler.kubeconfig" \
    --authentication-kubeconfig="$state/scheduler.kubeconfig" \
    --authorization-kubeconfig="$state/scheduler.kubeconfig" \
    --leader-elect=false --port=0 --bind-address=127.0.0.1 --secure-port=10259
  launch kubelet "$assets/kubelet" \
    --config="$state/kubelet/config.yaml" --kubeconfig="$state/kubelet.kubeconfig" \
    --root-dir="$state/kubelet/root" --cert-dir="$state/kubelet/pki" \
    --container-runtime=remote --container-runtime-endpoint="unix://$sock" \
    --runtime-request-timeout=5m \
    --hostname-override="$node" --node-ip="$ip"
  launch kube-proxy "$assets/kube-proxy" \
    --kubeconfig="$state/kube-proxy.kubeconfig" --hostname-override="$node" \
    --proxy-mode=iptables --cluster-cidr="$subnet" --bind-address="$ip" \
    --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 \
    --conntrack-tcp-timeout-close-wait=0

  wait_for "node $node Ready" 120 node_ready
  wait_for "ServiceAccount default/default" 60 kc -n default get serviceaccount default
  # The kubeconfig at this path says "the node is up" to the e2e test; stop removes it first.
  install -m 600 "$state/admin.kubeconfig" "$state/kubeconfig"
  log "node $node Ready in $((SECONDS - t0)) s; kubeconfig: $state/kubeconfig"
  # Images built before the node started.
  local f
  for f in "$cache"/images/*.oci.tar; do
    if [ -f "$f" ]; then import_images "$f"; fi
  done
  status
}

node_ready() {
  [ "$(kc get node "$node" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# The pod sandbox image: the tree's pause.c, statically linked (scripts/build-kube-apiserver.sh).
pause_archive() {
  local out="$cache/node-images/pause.oci.tar"
  if [ ! -f "$out" ] || [ "$assets/pause" -nt "$out" ]; then
    mkdir -p "$(dirname "$out")"
    local c
    c=$(buildah --storage-driver vfs from scratch)
    buildah --storage-driver vfs copy "$c" "$assets/pause" /pause >/dev/null
    buildah --storage-driver vfs config --entrypoint '["/pause"]' --user 65535:65535 "$c"
    buildah --storage-driver vfs commit -q --rm "$c" "$pause_image" >/dev/null
    rm -f "$out"
    buildah --storage-driver vfs push -q "$pause_image" "oci-archive:$out:$pause_image"
    buildah --storage-driver vfs rmi --prune >/dev/null 2>&1 || true
  fi
  echo "$out"
}

# ctr names an OCI archive's image after its org.opencontainers.image.ref.name only when that
# name starts with --base-name; buildah writes the full reference there.
import_images() {
  local f ref
  for f in "$@"; do
    ref=$({ tar -xOf "$f" index.json || true; } | { grep -o '"org.opencontainers.image.ref.name":"[^"]*"' || true; } | head -n1 | cut -d'"' -f4)
    [ -n "$ref" ] || die "$f: no org.opencontainers.image.ref.name in index.json"
    ctr_ images import --base-name "${ref%:*}" "$f" >/dev/null
    # The list is read whole first: `ctr ... | grep -q` under pipefail fails at random when grep
    # exits at the first match and ctr then dies of SIGPIPE writing the next line.
    local have
    have=$(ctr_ images ls -q)
    grep -xF "$ref" <<<"$have" >/dev/null || die "$f: imported, but containerd has no image $ref"
    log "imported $ref"
  done
}

status() {
  if [ -f "$state/kubeconfig" ] && node_ready; then
    echo "$state/kubeconfig"
  else
    log "not running"
    return 1
  fi
}

# --- stop ----------------------------------------------------------------------------------
stop() {
  [ "$(id -u)" = 0 ] || die "needs root"
  [ -d "$state" ] || { log "nothing to stop"; return 0; }
  rm -f "$state/kubeconfig"
  local c
  # kubelet first, so that it restarts nothing while the containers go.
  for c in kube-proxy kubelet kube-scheduler kube-controller-manager; do
    stop_pid "$state/pids/$c.pid"
  done
  if [ -S "$sock" ] && ctr_ version >/dev/null 2>&1; then
    local id
    for id in $(ctr_ tasks ls -q 2>/dev/null); do
      ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctr_ tasks ls -q 2>/dev/null); do
      ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctr_ containers ls -q 2>/dev/null); do
      ctr_ containers delete "$id" >/dev/null 2>&1 || true
    done
  fi
  for c in kube-apiserver etcd containerd; do
    stop_pid "$state/pids/$c.pid"
  done
  # Shims whose containerd is ours (they outlive it by design).
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Mounts under our folders (rootfs overlays, sandbox shm, pod volumes), deepest first.
  awk -v a="$state/" -v b="$run/" 'index($2, a) == 1 || index($2, b) == 1 {print $2}' /proc/self/mounts |
    sort -r | while IFS= read -r m; do umount -l "$m" 2>/dev/null || true; done
  # Network namespaces of pod sandboxes.
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do
    ip netns delete "$ns" 2>/dev/null || true
  done
  ip link delete "$bridge" 2>/dev/null || true
  clean_iptables
  # kubelet's cgroups (pods, QoS classes), deepest first.
  local root
  for root in /sys/fs/cgroup/*/ /sys/fs/cgroup/unified/; do
    [ -d "$root/kubepods" ] || continue
    find "$root/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  restore_sysctls
  local d
  for d in pods containers; do
    if [ -f "$state/created-var-log-$d" ]; then rm -rf "/var/log/$d" "$state/created-var-log-$d"; fi
  done
  # Everything but the PKI and the logs: the next start begins with an empty cluster.
  rm -rf "$state/etcd" "$state/containerd" "$state/kubelet" "$state/cni-ipam" "$state/pids" "$run"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  import) shift; import_images "$@" ;;
  *) log "usage: $0 start|stop|status|import FILE..."; exit 2 ;;
esac
