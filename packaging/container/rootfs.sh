#!/usr/bin/env bash
# rootfs.sh BINARY OUTDIR: lay out the keycore runtime image's root filesystem
# from a built binary and exactly the shared libraries `ldd` names (plus the
# dynamic loader), a passwd/group with the non-root `keyless` user (uid/gid
# 65532), the CA bundle for cloud KMS HTTPS, and /etc/keyless{,/keys}.
# Used by the Containerfile's build stage and by CI (.ci/package.sh), so
# both images have the same contents. Writes nothing outside OUTDIR.
set -euo pipefail
bin=${1:?usage: rootfs.sh BINARY OUTDIR}
out=${2:?usage: rootfs.sh BINARY OUTDIR}
rm -rf "$out"
# proc, sys and dev are mount points the runtime fills (glommio reads the
# CPU topology from /sys).
mkdir -p "$out/usr/bin" "$out/etc/keyless/keys" "$out/etc/ssl/certs" "$out/tmp" \
  "$out/proc" "$out/sys" "$out/dev"
install -m 0755 "$bin" "$out/usr/bin/keycore"
# Every absolute path ldd prints (libs and the loader), copied through
# symlinks to the same path inside the image.
ldd "$bin" | grep -o '/[^ )]*' | sort -u | while read -r lib; do
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
done
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/"
fi
cat > "$out/etc/passwd" <<'P'
root:x:0:0:root:/root:/usr/sbin/nologin
keyless:x:65532:65532:keycore key server:/nonexistent:/usr/sbin/nologin
P
cat > "$out/etc/group" <<'G'
root:x:0:
keyless:x:65532:
G
chmod 0755 "$out/etc/keyless"
chmod 0700 "$out/etc/keyless/keys"
chown 65532:65532 "$out/etc/keyless/keys" 2>/dev/null || true
chmod 1777 "$out/tmp"
