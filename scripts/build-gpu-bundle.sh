#!/usr/bin/env bash
# Builds the GPU check binary and gathers what scripts/gpu-check.sh needs on a GPU machine that
# has neither a Rust toolchain nor network access:
#
#   .gpu-bin/gpu_check.xz    examples/examples/gpu_check.rs with the cuda (+ NCCL) and vulkan
#                            backends: `gpu_check step|conformance|nccl|mhcl|info`, stripped,
#                            xz-compressed (one binary: the backends share burn's code)
#   .gpu-bin/reference/      bench_step.py + mhcl_ref.py (the PyTorch timing of the same step)
#   .gpu-bin/MANIFEST        source hash, git revision, features, size and sha256 of the binary
#   .gpu-data/aid/train/     AID_PER_CLASS images of each AID class, for `mhcl pretrain` there
#   .gl/*.deb                the Vulkan loader (libvulkan1) and GL dispatch packages, for a
#                            machine without libvulkan.so.1
#
# The folders are ignored through .git/info/exclude (added here when missing) and travel with
# the device tool's `carry`. The script prints the total the device call carries (tracked and
# untracked files of the tree plus these folders) and fails when it is over 64 MiB. See
# docs/gpu.md.
#
# Environment:
#   GPU_TARGET_DIR   cargo target dir for the GPU-feature build (default target/gpu). Keep it apart
#                    from the everyday target dir: toggling burn features there rebuilds burn.
#   GPU_FEATURES     features of ssl-examples (default cuda,vulkan; empty: a CPU-only stand-in; `cuda` installs the LLVM SDK
#                    first with scripts/install-llvm.sh)
#   REFERENCE_DIR    folder of bench_step.py / mhcl_ref.py (default ../shared/reference)
#   AID_DIR          the AID dataset (default ../shared/data/AID; absent: no .gpu-data)
#   AID_PER_CLASS    images per class copied (default 30)
#   NICE             command prefix for the build (default "nice -n 19")
#   SKIP_DEBS=1      do not download the .deb packages
#   CUDARC_CUDA_VERSION  CUDA API version of the cudarc bindings (default 13000: the GPU machine
#                    runs a CUDA 13.0 driver; cudarc loads libcuda/libnccl at run time)
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${GPU_TARGET_DIR:-target/gpu}
FEATURES=${GPU_FEATURES-cuda,vulkan}
REF=${REFERENCE_DIR:-../shared/reference}
AID=${AID_DIR:-../shared/data/AID}
PER_CLASS=${AID_PER_CLASS:-30}
LIMIT=67108864
read -r -a NICE_CMD <<<"${NICE:-nice -n 19}"
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}

mkdir -p .git/info
for p in /.gpu-bin/ /.gl/ /.gpu-data/; do
    grep -qxF "$p" .git/info/exclude 2>/dev/null || echo "$p" >>.git/info/exclude
done

case ",$FEATURES," in *,cuda,*) bash scripts/install-llvm.sh ;; esac

SOURCE_HASH=$(bash scripts/source-hash.sh)
echo "== building gpu_check (features: $FEATURES, target dir: $TARGET, sources $SOURCE_HASH)"
GPU_CHECK_SOURCE_HASH=$SOURCE_HASH "${NICE_CMD[@]}" cargo build --release -p ssl-examples \
    --features "$FEATURES" --example gpu_check --target-dir "$TARGET"

rm -rf .gpu-bin
mkdir -p .gpu-bin/reference
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
cp "$TARGET/release/examples/gpu_check" "$STAGE/gpu_check"
strip "$STAGE/gpu_check"
got=$("$STAGE/gpu_check" info | sed -n 's/^source //p')
[ "$got" = "$SOURCE_HASH" ] || {
    echo "error: the built gpu_check reports sources $got, the tree is $SOURCE_HASH" >&2
    exit 1
}
echo "== compressing"
xz -T0 -6 -c "$STAGE/gpu_check" >.gpu-bin/gpu_check.xz
cp "$REF/bench_step.py" "$REF/mhcl_ref.py" .gpu-bin/reference/
{
    echo "source: $SOURCE_HASH"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(rustc --version)"
    echo "features: ssl-examples/$FEATURES; CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION"
    "$STAGE/gpu_check" info | sed 's/^/gpu_check info: /'
    (cd "$STAGE" && sha256sum gpu_check && ls -l gpu_check)
} >.gpu-bin/MANIFEST

rm -rf .gpu-data
if [ -d "$AID" ]; then
    echo "== AID subset: $PER_CLASS images per class from $AID"
    for class_dir in "$AID"/*/; do
        class=$(basename "$class_dir")
        mkdir -p ".gpu-data/aid/train/$class"
        find "$class_dir" -maxdepth 1 -type f -name '*.jpg' | LC_ALL=C sort | sed -n "1,${PER_CLASS}p" |
            xargs -r cp -t ".gpu-data/aid/train/$class/"
    done
else
    echo "== no AID at $AID: the end-to-end pretrain step of gpu-check.sh uses synthetic data"
fi

if [ "${SKIP_DEBS:-0}" != 1 ]; then
    echo "== Vulkan loader packages"
    mkdir -p .gl /tmp/amd64/partial
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    apt-get "${o[@]}" update >/dev/null
    (cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi

cat .gpu-bin/MANIFEST
# what the device tool sends: tracked and untracked-but-not-ignored files, plus the carried folders
tree_bytes=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null || true) |
    awk '$2 == "total" { s += $1 } END { print s + 0 }')
carry_bytes=$(du -cb .gpu-bin .gl .gpu-data 2>/dev/null | tail -1 | cut -f1)
total=$((tree_bytes + carry_bytes))
du -sh .gpu-bin .gl .gpu-data 2>/dev/null || true
echo "total carried: working tree $tree_bytes B + bundle $carry_bytes B = $total B of $LIMIT B (64 MiB)"
if [ "$total" -gt "$LIMIT" ]; then
    echo "error: the bundle and the tree are $total B, over the 64 MiB one device call carries (lower AID_PER_CLASS)" >&2
    exit 1
fi
echo "== run on the GPU machine: bash scripts/gpu-check.sh   (carry .gpu-bin, .gpu-data, .gl)"
