#!/usr/bin/env bash
# Packaging checks (issue 15), run by .ci/run as root on the CI machine:
#   1. build the .deb with cargo-deb; 2. dpkg -i it and check files, owners,
#   modes, the keyless user, the conffile, that nothing was enabled/started;
#   3. systemd-analyze verify the installed unit; 4. the installed binary's
#   `serve --check` (sample config fails, a filled one passes) and a short
#   serve as the keyless user probed with `keycore healthcheck`; 5. dpkg -r
#   keeps the conffile, dpkg -P removes it; 6. the glibc baseline; 7. the
#   runtime image built FROM scratch with buildah, run with podman where the
#   machine allows it (else the same image's root filesystem is run in a
#   network-less namespace, read-only, as uid 65532 — see docs/install.md
#   for why podman cannot run here); 8. every Kubernetes manifest rendered
#   with kustomize and validated offline against the Kubernetes OpenAPI
#   schemas; and the release build's SBOM (scripts/sbom.sh). Prints the
#   time of each step.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

t0=$(date +%s)
last=$t0
step() {
  local now
  now=$(date +%s)
  echo "== package: $1 (previous step $((now - last))s, packaging total $((now - t0))s)"
  last=$now
}
fail() { echo "FAIL: $*" >&2; exit 1; }
# expect PATH MODE OWNER:GROUP
expect() {
  local got
  got=$(stat -c '%a %U:%G' "$1") || fail "$1 missing"
  [ "$got" = "$2 $3" ] || fail "$1: got '$got', want '$2 $3'"
  echo "ok $1 $got"
}

K8S_VERSION=1.32.0
KUBERNETES_VALIDATE=1.37.0
CARGO_DEB=3.8.0

step "tools"
need=()
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v dpkg-shlibdeps >/dev/null 2>&1 || need+=(dpkg-dev)
command -v objdump >/dev/null 2>&1 || need+=(binutils)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked --version "$CARGO_DEB"
fi
cargo deb --version

step "cargo deb (release profile, thin LTO for CI)"
# CI checks the packaging, not peak speed: thin LTO and 16 codegen units
# instead of the release profile's fat LTO / 1 unit keep this step inside
# the CI budget on 2 cores. Release packages: plain `cargo deb`.
rm -rf target/debian
if [ -n "${KEYCORE_PACKAGE_NO_BUILD:-}" ]; then
  # Developer loop: package an existing target/release/keycore.
  cargo deb --no-build --no-strip
else
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo deb --locked --override-lto thin
fi
deb=$(ls target/debian/keycore_*_amd64.deb)
echo "built $deb ($(stat -c %s "$deb") bytes)"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
dpkg-deb --contents "$deb"

step "SBOM of this release build (CycloneDX, scripts/sbom.sh)"
# Beside the .deb: keycore-<version>.cdx.json, checked to list every crate
# the binary links.
bash scripts/sbom.sh target/debian

step "dpkg -i"
if dpkg -s keycore >/dev/null 2>&1; then dpkg -P keycore; fi
dpkg -i "$deb"
expect /usr/bin/keycore 755 root:root
expect /lib/systemd/system/keycore.service 644 root:root
expect /etc/keyless/gokeyless.yaml 640 root:keyless
expect /etc/keyless/keys 700 keyless:keyless
expect /usr/share/doc/keycore/install.md 644 root:root
IFS=: read -r _ _ uid _ _ home shell < <(getent passwd keyless) || fail "no keyless user"
[ "$uid" -lt 1000 ] || fail "keyless is not a system user (uid $uid)"
[ "$shell" = /usr/sbin/nologin ] || fail "keyless has a shell: $shell"
[ "$home" = /nonexistent ] || fail "keyless home: $home"
getent group keyless >/dev/null || fail "no keyless group"
# (Outputs captured first: grep -q closing a pipe early would fail it under pipefail.)
conffiles=$(dpkg-query -W -f='${Conffiles}\n' keycore)
grep -q '/etc/keyless/gokeyless.yaml' <<<"$conffiles" ||
  fail "gokeyless.yaml is not a conffile"
# Nothing enabled or started on install.
[ ! -e /etc/systemd/system/multi-user.target.wants/keycore.service ] || fail "unit was enabled"
[ ! -e /run/keycore/keycore.pid ] || fail "service was started"
echo "ok keyless user uid $uid, conffile registered, unit neither enabled nor started"

step "systemd-analyze verify"
# Offline: this machine's PID 1 is not systemd, so the unit is checked, not
# started (see docs/install.md). verify loads the unit and its ExecStart.
systemd-analyze verify /lib/systemd/system/keycore.service
systemd-analyze security --offline=true /lib/systemd/system/keycore.service | tail -n 1 || true

step "installed binary: serve --check"
# The sample config must fail until filled in.
set +e
(cd /etc/keyless && runuser -u keyless -- /usr/bin/keycore serve --check -c /etc/keyless/gokeyless.yaml)
rc=$?
set -e
[ "$rc" = 1 ] || fail "sample config: --check exited $rc, want 1"
work=$(mktemp -d /tmp/keycore-package.XXXXXX)
trap 'rm -rf "$work"' EXIT
/usr/bin/keycore pki --dir "$work/etc/pki" >/dev/null
mport=$((20000 + RANDOM % 20000))
write_config() { # ROOT (paths as the server sees them) FILE
  cat >"$2" <<EOF
auth_cert: $1/pki/server.pem
auth_key: $1/pki/server.key.pem
cloudflare_ca_cert: $1/pki/ca.pem
private_key_stores:
  - dir: $1/pki/keys
port: 0
metrics_port: $mport
listen_address: 127.0.0.1
metrics_address: 127.0.0.1
cores: 1
EOF
}
write_config "$work/etc" "$work/etc/gokeyless.yaml"
chown -R keyless:keyless "$work"
chmod 0755 "$work"
runuser -u keyless -- /usr/bin/keycore serve --check -c "$work/etc/gokeyless.yaml"

step "installed binary: serve as keyless, probes, SIGTERM"
setpriv --reuid=keyless --regid=keyless --init-groups /usr/bin/keycore serve -c "$work/etc/gokeyless.yaml" 2>"$work/serve.log" &
spid=$!
ok=
for _ in $(seq 1 100); do
  if /usr/bin/keycore healthcheck --addr "127.0.0.1:$mport" --path /readyz >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.2
done
[ -n "$ok" ] || { cat "$work/serve.log"; fail "installed server never became ready"; }
/usr/bin/keycore healthcheck --addr "127.0.0.1:$mport" --path /healthz
kill -TERM "$spid"
timeout 30 tail --pid="$spid" -f /dev/null || fail "no exit within 30 s of SIGTERM"
wait "$spid" || fail "serve exited non-zero after SIGTERM"
if grep -q $'\x1b' "$work/serve.log"; then fail "ANSI codes in logs written to a file"; fi

step "dpkg -r keeps the conffile, dpkg -P removes it"
dpkg -r keycore
[ ! -e /usr/bin/keycore ] || fail "binary left after dpkg -r"
[ -f /etc/keyless/gokeyless.yaml ] || fail "dpkg -r removed the conffile"
status=$(dpkg -s keycore)
grep -q 'Status: deinstall ok config-files' <<<"$status" || fail "unexpected status after dpkg -r"
dpkg -P keycore
[ ! -e /etc/keyless/gokeyless.yaml ] || fail "dpkg -P kept the conffile"
[ ! -e /etc/keyless ] || fail "/etc/keyless left after purge (it was empty)"
echo "ok remove kept, purge removed /etc/keyless/gokeyless.yaml"

step "glibc baseline"
bin=target/release/keycore
glibc=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sort -uV | tail -n 1)
echo "keycore needs $glibc (built on $(. /etc/os-release && echo "$PRETTY_NAME"), $(ldd --version | head -n 1))"
[ "$(printf '%s\n' "$glibc" GLIBC_2.36 | sort -V | tail -n 1)" = GLIBC_2.36 ] ||
  fail "binary needs $glibc, newer than bookworm's 2.36"
ldd "$bin"

step "container image (buildah: the Containerfile's runtime stage, FROM scratch)"
# No base image can be pulled here, so the Containerfile's build stage is
# replaced by a local context holding the root filesystem that stage would
# make (same script) from the binary just packaged; the runtime stage (user,
# HEALTHCHECK, entrypoint) is the Containerfile's own.
B="buildah --storage-driver vfs"
P="podman --storage-driver vfs"
bash packaging/container/rootfs.sh "$bin" "$work/ctx/rootfs"
$B build --quiet --format docker --target runtime --build-context "build=$work/ctx" \
  -t localhost/keycore:ci -f Containerfile "$work/ctx" >/dev/null
$B inspect --type image --format 'user={{.Docker.Config.User}} entrypoint={{.Docker.Config.Entrypoint}} cmd={{.Docker.Config.Cmd}} healthcheck={{.Docker.Config.Healthcheck.Test}}' localhost/keycore:ci
image_json=$($B inspect --type image localhost/keycore:ci)
grep -q '"healthcheck",' <<<"$image_json" || fail "image has no HEALTHCHECK"
$P images localhost/keycore:ci

step "container run"
# The container's view: the test config and PKI at /etc/keyless.
mkdir -p "$work/ctr"
cp -r "$work/etc/pki" "$work/ctr/pki"
write_config /etc/keyless "$work/ctr/gokeyless.yaml"
chown -R 65532:65532 "$work/ctr"
# Limits the runtime may set: no higher than this machine's hard limits.
memlock=$(ulimit -Hl)
[ "$memlock" = unlimited ] && memlock=-1 || memlock=$((memlock * 1024))
ulimits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=1024:1024" --ulimit "memlock=$memlock:$memlock")
if $P run -d --name keycore-ci --replace --network none --read-only "${ulimits[@]}" \
  -v "$work/ctr:/etc/keyless:ro" localhost/keycore:ci >"$work/podman.out" 2>&1; then
  ok=
  for _ in $(seq 1 100); do
    if $P exec keycore-ci /usr/bin/keycore healthcheck --addr "127.0.0.1:$mport" --path /readyz >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.2
  done
  $P logs keycore-ci | tail -n 5
  $P stop -t 30 keycore-ci >/dev/null
  $P rm keycore-ci >/dev/null
  [ -n "$ok" ] || fail "container never became ready"
  echo "ok podman run --network none --read-only: /readyz answered 200 on loopback"
else
  echo "SKIP podman run: the OCI runtime cannot start a container on this machine:"
  cat "$work/podman.out"
  $P rm -f keycore-ci >/dev/null 2>&1 || true
  echo "   running the same image's root filesystem instead: new network namespace (loopback only),"
  echo "   read-only bind mount, uid/gid 65532, the image's entrypoint."
  ctr=$($B from localhost/keycore:ci)
  mnt=$($B mount "$ctr")
  timeout 60 unshare --net --mount --fork bash -euo pipefail -c '
    mnt=$1; cfg=$2; mport=$3
    ip link set lo up
    mount --bind "$mnt" "$mnt"
    mount -o remount,bind,ro "$mnt"
    mount --bind "$cfg" "$mnt/etc/keyless"
    mount -t proc proc "$mnt/proc"
    mount --rbind /sys "$mnt/sys"
    mount --rbind /dev "$mnt/dev"
    chroot --userspec=65532:65532 "$mnt" /usr/bin/keycore serve -c /etc/keyless/gokeyless.yaml 2>/tmp/keycore-image.log &
    pid=$!
    ok=
    for _ in $(seq 1 100); do
      if chroot --userspec=65532:65532 "$mnt" /usr/bin/keycore healthcheck --addr "127.0.0.1:$mport" --path /readyz >/dev/null 2>&1; then ok=1; break; fi
      sleep 0.2
    done
    if touch "$mnt/usr/bin/x" 2>/dev/null; then echo "root filesystem is writable"; exit 1; fi
    [ -n "$ok" ] || { cat /tmp/keycore-image.log; exit 1; }
    kill -TERM "$pid"; wait "$pid"
    echo "ok image rootfs served: /readyz answered 200 on loopback, read-only root, uid 65532"
  ' _ "$mnt" "$work/ctr" "$mport"
  $B umount "$ctr" >/dev/null
  $B rm "$ctr" >/dev/null
fi

step "kubernetes manifests (kustomize + kubernetes-validate $KUBERNETES_VALIDATE, Kubernetes $K8S_VERSION)"
venv=target/ci-venv
kv_version=$("$venv/bin/kubernetes-validate" --version 2>/dev/null || true)
if [ "$kv_version" != "$KUBERNETES_VALIDATE" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE"
fi
command -v kubectl >/dev/null 2>&1 || fail "kubectl (for kustomize) is missing"
rendered=()
for k in deploy/kubernetes/base deploy/kubernetes/overlays/* deploy/kubernetes/loadgen; do
  out="$work/$(echo "$k" | tr / _).yaml"
  kubectl kustomize "$k" >"$out"
  rendered+=("$out")
  echo "rendered $k: $(grep -c '^kind:' "$out") objects"
done
"$venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${rendered[@]}" \
  deploy/kubernetes/examples/*.yaml
python3 -m json.tool deploy/kubernetes/seccomp/keycore-io-uring.json >/dev/null
echo "ok every manifest valid for Kubernetes $K8S_VERSION (strict: no unknown fields)"

step "done"
