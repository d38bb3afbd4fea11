#!/usr/bin/env bash
# Runs the CPU backend's matrix-kernel tests (ssl-models/tests/matmul_kernels.rs) and the
# convolution / BatchNorm / pooling kernel tests (ssl-models/tests/kernels.rs), built with the
# `avx512` feature (on by default: gemm's AVX-512 kernels, chosen at run time), twice from the
# same test binaries: natively (AVX-512 kernels on a CPU that has them), and under
# `qemu-x86_64 -cpu Haswell`, an AVX2 + FMA CPU without AVX-512, where gemm must take its AVX2
# kernels (the matrix test then requires SSL_EXPECT_MATMUL_ISA=avx2-fma) and the results must
# still match their references. Installs Debian's qemu-user when qemu-x86_64 is missing (root,
# or sudo). x86-64 only. Builds into AVX512_TARGET_DIR (default target, the default features'
# build).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v qemu-x86_64 >/dev/null; then
    echo "== installing qemu-user"
    ${SUDO:-$( [ "$(id -u)" = 0 ] || echo sudo )} apt-get install -y -q qemu-user >/dev/null
fi
bin=$(cargo test --release -p ssl-models --features avx512 --test matmul_kernels --no-run \
    --target-dir "${AVX512_TARGET_DIR:-target}" --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "matmul_kernels" in m["target"]["name"]:
        print(m["executable"])')
[ -x "$bin" ] || { echo "error: matmul_kernels test binary not found" >&2; exit 1; }
echo "== native ($(grep -q avx512f /proc/cpuinfo && echo AVX-512 CPU || echo no AVX-512)): $bin"
"$bin" --nocapture 2>&1 | grep -E "gemm kernels|test result"
echo "== qemu-x86_64 -cpu Haswell (AVX2 + FMA, no AVX-512)"
SSL_EXPECT_MATMUL_ISA=avx2-fma \
    qemu-x86_64 -cpu Haswell "$bin" --nocapture 2>&1 | grep -E "gemm kernels|test result|panicked|error"
kernels=$(cargo test --release -p ssl-models --features avx512 --test kernels --no-run \
    --target-dir "${AVX512_TARGET_DIR:-target}" --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "kernels":
        print(m["executable"])')
[ -x "$kernels" ] || { echo "error: kernels test binary not found" >&2; exit 1; }
echo "== kernels, native: $kernels"
"$kernels" 2>&1 | grep -E "test result|panicked"
echo "== kernels, qemu-x86_64 -cpu Haswell"
qemu-x86_64 -cpu Haswell "$kernels" 2>&1 | grep -E "test result|panicked|error"
