#!/usr/bin/env bash
# Summarise a `perf record -e cpu-clock -g` profile of the server by self time
# into categories (sign crypto, TLS record crypto, kernel, copies, allocator,
# keycore/rustls/glommio code) and list the top symbols.
# Usage: bench/scripts/profile_summary.sh perf.data [top-N]
set -euo pipefail
data=${1:?perf.data}
top=${2:-25}
perf report -i "$data" --no-children --sort symbol --stdio -g none 2>/dev/null |
  awk -v top="$top" '
  /^ +[0-9.]+%/ {
    pct = $1; sub(/%/, "", pct); pct += 0
    kind = $2; sym = $0; sub(/^ +[0-9.]+% +\[[^]]*\] +/, "", sym); sub(/ +-? +-? *$/, "", sym)
    if (kind == "[k]") cat = "kernel (syscalls, TCP, scheduler)"
    else if (sym ~ /aes|gcm|ghash|gmult|CRYPTO_gcm|chacha|poly1305/) cat = "TLS record crypto (AES-GCM)"
    else if (sym ~ /memmove|memcpy|memset/) cat = "memcpy/memset"
    else if (sym ~ /malloc|free|_mi_|mi_|realloc|_int_/) cat = "allocator"
    else if (sym ~ /rustls/) cat = "rustls (non-crypto)"
    else if (sym ~ /glommio|futures|io_uring|Reactor|Source/) cat = "glommio / futures"
    else if (sym ~ /keycore/) cat = "keycore code"
    else if (sym ~ /ecp_|ec_|ECDSA|bignum|bn_|BN_|sha|SHA|RSA|rsa|rand|RAND|drbg|ed25519|ED25519|x25519|fiat|p256|nistz|mont|CBB|CBS|EVP|ecdsa|scalar|Lbignum|OPENSSL|cleanse/) cat = "signature crypto (aws-lc)"
    else cat = "other"
    total[cat] += pct
    if (n < top) { printf "%7.2f%%  %s\n", pct, substr(sym, 1, 110); n++ }
  }
  END {
    print "--- self time by category ---"
    for (c in total) printf "%7.2f%%  %s\n", total[c], c | "sort -rn"
  }'
