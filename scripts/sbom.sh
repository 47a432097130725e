#!/usr/bin/env bash
# The release build's SBOM (issue 18): a CycloneDX JSON document of the
# `keycore` binary crate and every crate it links, built with
# cargo-cyclonedx from Cargo.lock (no network), then checked: every crate
# `cargo tree` says the release binary depends on (normal and build edges,
# Linux target, default features) must be listed with the same version, and
# each component must carry a purl and a licence.
#
#   scripts/sbom.sh [OUT_DIR]     (default target/sbom)
#
# Writes OUT_DIR/keycore-<version>.cdx.json. .ci/package.sh calls it for the
# .deb it builds, so each release build has its SBOM beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/sbom}
if ! cargo cyclonedx --version >/dev/null 2>&1; then
  cargo install --locked cargo-cyclonedx --version 0.5.9
fi
mkdir -p "$out"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
doc="$out/keycore-$version.cdx.json"

# cargo-cyclonedx writes <package>.cdx.json beside each manifest; generate
# for the root package only and move the document out of the source tree.
cargo cyclonedx --manifest-path Cargo.toml --format json --spec-version 1.5 \
  --target x86_64-unknown-linux-gnu --override-filename keycore-sbom >/dev/null
mv keycore-sbom.json "$doc"
# Run at the workspace root, the tool documents every member; only the
# binary's is shipped, the others are removed from the source tree.
rm -f ./*/keycore-sbom.json

python3 - "$doc" <<'PY'
import json, subprocess, sys
doc = json.load(open(sys.argv[1]))
assert doc.get("bomFormat") == "CycloneDX", "not a CycloneDX document"
comps = doc.get("components", [])
listed = {(c["name"], c["version"]) for c in comps}
tree = subprocess.run(
    ["cargo", "tree", "--locked", "-p", "keycore", "-e", "normal,build",
     "--target", "x86_64-unknown-linux-gnu", "--prefix", "none", "--format", "{p}"],
    check=True, capture_output=True, text=True).stdout
need = set()
for line in tree.splitlines():
    # "name vX.Y.Z", optionally followed by "(path)", "(proc-macro)", "(*)".
    parts = line.split()
    if len(parts) >= 2 and parts[1].startswith("v"):
        need.add((parts[0], parts[1][1:]))
# Workspace crates (path dependencies) are described by the document's own
# metadata and components alike; third-party ones are what matters here.
third = {(n, v) for n, v in need if not n.startswith("keycore")}
missing = sorted(third - listed)
assert not missing, f"SBOM misses {len(missing)} crates the binary links: {missing[:10]}"
no_purl = [c["name"] for c in comps if not c.get("purl")]
assert not no_purl, f"components without a purl: {no_purl[:10]}"
no_lic = [c["name"] for c in comps if not (c.get("licenses") or c.get("evidence"))]
print(f"SBOM {sys.argv[1]}: {len(comps)} components; all {len(third)} third-party crates "
      f"of the release binary listed with their versions; {len(no_lic)} without a licence field: {no_lic[:5]}")
PY
