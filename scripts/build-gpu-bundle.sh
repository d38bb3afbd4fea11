#!/usr/bin/env bash
# Builds the GPU check binaries and gathers what scripts/gpu-check.sh needs on a GPU machine that
# has neither a Rust toolchain nor network access:
#
#   .gpu-bin/bin.tar.xz      gpu_conformance, mhcl_bench_step (burn Vulkan backend) and nccl_check
#                            (ssl-distributed NCCL group), stripped, xz-compressed
#   .gpu-bin/reference/      bench_step.py + mhcl_ref.py (the PyTorch timing of the same step)
#   .gpu-bin/MANIFEST        git revision, features, sizes, sha256 of each binary
#   .gl/*.deb                the Vulkan loader (libvulkan1) and GL dispatch packages, for a
#                            machine without libvulkan.so.1
#
# Both folders are ignored through .git/info/exclude (added here when missing) and travel with
# the device tool's `carry`. See docs/gpu.md.
#
# Environment:
#   GPU_TARGET_DIR   cargo target dir for the GPU-feature build (default target/gpu). Keep it apart
#                    from the everyday target dir: toggling burn features there rebuilds burn.
#   GPU_FEATURES     features of ssl-examples (default vulkan; cuda needs the LLVM bundle download)
#   NCCL_TARGET_DIR  target dir for nccl_check (default target: it changes no burn feature, so
#                    the everyday build of burn is reused there)
#   REFERENCE_DIR    folder of bench_step.py / mhcl_ref.py (default ../shared/reference)
#   NICE             command prefix for the builds (default "nice -n 19")
#   SKIP_DEBS=1      do not download the .deb packages
#   CUDARC_CUDA_VERSION  CUDA API version of the cudarc bindings (default 13000: the GPU machine
#                    runs a CUDA 13.0 driver; cudarc loads libcuda/libnccl at run time)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${GPU_TARGET_DIR:-target/gpu}
NCCL_TARGET=${NCCL_TARGET_DIR:-target}
FEATURES=${GPU_FEATURES:-vulkan}
REF=${REFERENCE_DIR:-../shared/reference}
read -r -a NICE_CMD <<<"${NICE:-nice -n 19}"
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}

mkdir -p .git/info
for p in /.gpu-bin/ /.gl/; do
    grep -qxF "$p" .git/info/exclude 2>/dev/null || echo "$p" >>.git/info/exclude
done

echo "== building (features: $FEATURES, target dir: $TARGET)"
"${NICE_CMD[@]}" cargo build --release -p ssl-examples --features "$FEATURES" \
    --example gpu_conformance --example mhcl_bench_step --target-dir "$TARGET"
"${NICE_CMD[@]}" cargo build --release -p ssl-distributed --features nccl \
    --example nccl_check --target-dir "$NCCL_TARGET"

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
cp "$TARGET/release/examples/gpu_conformance" "$TARGET/release/examples/mhcl_bench_step" \
    "$NCCL_TARGET/release/examples/nccl_check" "$STAGE/"
for b in gpu_conformance mhcl_bench_step nccl_check; do
    strip "$STAGE/$b" 2>/dev/null || true
done
rm -rf .gpu-bin
mkdir -p .gpu-bin/reference
echo "== compressing"
tar -C "$STAGE" -cJf .gpu-bin/bin.tar.xz gpu_conformance mhcl_bench_step nccl_check
cp "$REF/bench_step.py" "$REF/mhcl_ref.py" .gpu-bin/reference/
{
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(rustc --version)"
    echo "features: ssl-examples/$FEATURES, ssl-distributed/nccl; CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION"
    (cd "$STAGE" && sha256sum gpu_conformance mhcl_bench_step nccl_check && ls -l gpu_conformance mhcl_bench_step nccl_check)
} >.gpu-bin/MANIFEST

if [ "${SKIP_DEBS:-0}" != 1 ]; then
    echo "== Vulkan loader packages"
    mkdir -p .gl /tmp/amd64/partial
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    apt-get "${o[@]}" update >/dev/null
    (cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi

cat .gpu-bin/MANIFEST
du -sh .gpu-bin .gl 2>/dev/null || true
tree_bytes=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
carry_bytes=$(du -cb .gpu-bin .gl 2>/dev/null | tail -1 | cut -f1)
echo "working tree ${tree_bytes} B + carried ${carry_bytes} B (the device tool takes 64 MiB = 67108864 B)"
if [ $((tree_bytes + carry_bytes)) -gt 67108864 ]; then
    echo "warning: over the 64 MiB the device tool carries" >&2
fi
echo "== run on the GPU machine: bash scripts/gpu-check.sh   (carry .gpu-bin and .gl)"
cd "$ROOT"
