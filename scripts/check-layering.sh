#!/usr/bin/env bash
# Checks the crate layering of issue 11 (no crate circles, no engine in the
# backends or the stand-ins, protocol depends on nothing) and prints the
# module edges inside the engine so a module circle is visible.
# Usage: scripts/check-layering.sh   (exits 1 on a violation)
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
deps() { # normal (non-dev) keycore-* dependencies of a package
  cargo tree -p "$1" -e normal --depth 1 --prefix none 2>/dev/null |
    tail -n +2 | awk '{print $1}' | { grep '^keycore-' || true; } | sort -u | tr '\n' ' '
}
expect() { # package, allowed keycore deps...
  local p=$1; shift
  local got; got=$(deps "$p")
  for d in $got; do
    case " $* " in *" $d "*) ;; *) echo "VIOLATION: $p depends on $d (allowed: $*)"; fail=1 ;; esac
  done
  echo "$p -> ${got:-(no keycore crate)}"
}
expect keycore-protocol
expect keycore-config keycore-protocol
expect keycore-keys keycore-protocol
expect keycore-pkcs11 keycore-protocol keycore-config keycore-keys
expect keycore-kms keycore-protocol keycore-config keycore-keys
expect keycore-kmssim keycore-protocol keycore-keys
expect keycore-engine keycore-protocol keycore-config keycore-keys keycore-pkcs11 keycore-kms
if [ -n "$(cargo tree -p keycore-protocol -e normal --prefix none | tail -n +2)" ]; then
  echo "VIOLATION: keycore-protocol has dependencies"; fail=1
fi
# Edges from code only: comment lines (docs naming another module) are not
# dependencies.
edges=$(mktemp)
trap 'rm -f "$edges"' EXIT
for f in $(find engine/src -name '*.rs'); do
  from=$(echo "$f" | sed -E 's#engine/src/([a-z_0-9]+).*#\1#')
  grep -vE '^[[:space:]]*//' "$f" | grep -oE 'crate::[a-z_0-9]+' | sed "s#crate::#$from #" || true
done | sort -u | awk '$1 != $2' > "$edges"
echo "engine modules, by how many other modules use them (crate::X in code):"
cut -d' ' -f2 "$edges" | sort | uniq -c | sort -rn | sed 's/^/  /'
# Any circle, of any length: tsort(1) refuses a graph with a loop and names
# the modules on it.
if ! tsort "$edges" >/dev/null 2>"$edges.err"; then
  echo "CIRCLE among engine modules:"; sed 's/^/  /' "$edges.err"; fail=1
else
  echo "engine modules: $(wc -l < "$edges") edges, no circle (tsort)"
fi
rm -f "$edges.err"

exit $fail
