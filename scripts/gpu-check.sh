#!/usr/bin/env bash
# The GPU check, in one run of under 10 minutes, on an NVIDIA machine without Rust or network,
# from the repository root, with the bundle of scripts/build-gpu-bundle.sh (.gpu-bin/, .gl/):
#
#   (a) the PyTorch conformance cases on the GPU backend (gpu_conformance --device vulkan),
#       including the bf16-vs-f32 loss-curve check;
#   (b) the full MHCL training step, ResNet-50 at 224 px, batch 64, K 65536, 8 scales, MLP head:
#       mhcl_bench_step on the GPU vs ../shared/reference/bench_step.py --device cuda, same
#       settings, same GPU, this run;
#   (c) a one-process NCCL all-reduce / all-gather / broadcast through ssl-distributed, compared
#       with the CPU (LocalGroup) results;
#   (d) a closing table: images/s of both and the ratio (also written to $OUT/gpu-table.md).
#
# Usage (device tool):  run(command="bash scripts/gpu-check.sh", carry=[".gpu-bin", ".gl"],
#                           timeout_s=450)
# Outputs go to $OUT (default /tmp/gpu-check): gpu-check.log, conformance.json,
# bench_torch.json, bench_burn.json, bench_burn_bf16.json, nccl.log, gpu-table.md.
# Environment: GPU_CHECK_DEVICE (default vulkan), GPU_CHECK_ITERS (timed steps, default 10),
# GPU_CHECK_BUDGET (seconds for the whole script, default 420; later steps get shorter limits
# and optional ones are skipped when it runs short).
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
DEV=${GPU_CHECK_DEVICE:-vulkan}
ITERS=${GPU_CHECK_ITERS:-10}
BUDGET=${GPU_CHECK_BUDGET:-420}
BIN=/tmp/gpu-bin
elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET - $(elapsed))); }
# step LIMIT PERCENT NAME CMD...: runs CMD with a timeout of min(LIMIT, PERCENT % of the time
# left), so that the later steps keep their share; prints the status on stderr.
step() {
    local limit=$1 percent=$2 name=$3
    shift 3
    local avail=$(($(left) * percent / 100))
    [ "$avail" -lt "$limit" ] && limit=$avail
    if [ "$limit" -lt 20 ]; then
        echo "== $name: SKIPPED (not enough time left)" >&2
        return 124
    fi
    echo "== $name (limit ${limit}s, at $(elapsed)s)" >&2
    timeout -k 5 "$limit" "$@"
    local rc=$?
    echo "== $name: exit $rc after $(elapsed)s" >&2
    return $rc
}

echo "== GPU check at $(date -u +%FT%TZ); device $DEV; budget ${BUDGET}s"
cat .gpu-bin/MANIFEST 2>/dev/null || { echo "error: .gpu-bin/ missing: run scripts/build-gpu-bundle.sh and carry .gpu-bin"; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | head -3
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))' 2>&1

mkdir -p "$BIN"
python3 -c 'import sys, tarfile; t = tarfile.open(sys.argv[1]); t.extractall(sys.argv[2], filter="data") if hasattr(tarfile, "data_filter") else t.extractall(sys.argv[2])' \
    .gpu-bin/bin.tar.xz "$BIN" || { echo "error: cannot unpack .gpu-bin/bin.tar.xz"; exit 2; }
chmod +x "$BIN"/*

# Vulkan: the loader from .gl/ when the image has none; NVIDIA's ICD from the driver mount.
if ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
    if ls .gl/*.deb >/dev/null 2>&1; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
        echo "Vulkan loader unpacked from .gl/"
    else
        echo "warning: no libvulkan.so.1 and no .gl/ packages"
    fi
fi
if ! ls /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json >/dev/null 2>&1; then
    for f in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.x86_64.json; do
        if [ -f "$f" ]; then export VK_DRIVER_FILES=$f; echo "VK_DRIVER_FILES=$f"; break; fi
    done
fi

# (a) conformance on the GPU backend
step 120 30 "(a) conformance on --device $DEV" \
    "$BIN/gpu_conformance" --device "$DEV" --dir tests/conformance --curve-steps 300 \
    --json "$OUT/conformance.json"
CONF_RC=$?

# (b) the MHCL step: PyTorch first (the baseline), then ours
ARGS=(resnet50 64 224 65536 "$ITERS")
step 90 35 "(b) PyTorch bench_step.py --device cuda" \
    python3 .gpu-bin/reference/bench_step.py --device cuda --arch resnet50 --batch 64 \
    --size 224 --moco-k 65536 --mlp --iters "$ITERS" --warmup 3 >"$OUT/bench_torch.json"
cat "$OUT/bench_torch.json"
step 180 80 "(b) burn mhcl_bench_step --device $DEV (f32)" \
    "$BIN/mhcl_bench_step" "${ARGS[@]}" --device "$DEV" >"$OUT/bench_burn.json"
cat "$OUT/bench_burn.json"

# (c) NCCL through ssl-distributed (cudarc wants libnccl.so; the pip wheel ships libnccl.so.2)
NCCL=$(python3 - <<'EOF'
import glob, os, sys
for p in sys.path:
    for f in glob.glob(os.path.join(p, "nvidia", "nccl", "lib", "libnccl.so*")):
        print(f); raise SystemExit
EOF
)
if [ -n "$NCCL" ]; then
    mkdir -p /tmp/nccl-lib && ln -sf "$NCCL" /tmp/nccl-lib/libnccl.so
    export LD_LIBRARY_PATH=/tmp/nccl-lib:$(dirname "$NCCL")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    echo "NCCL: $NCCL"
fi
step 40 50 "(c) NCCL all-reduce / all-gather vs CPU" "$BIN/nccl_check" 0 2>&1 | tee "$OUT/nccl.log"
NCCL_RC=${PIPESTATUS[0]}

# optional: our step in bf16
step 120 95 "(b') burn mhcl_bench_step --device $DEV --precision bf16" \
    "$BIN/mhcl_bench_step" "${ARGS[@]}" --device "$DEV" --precision bf16 >"$OUT/bench_burn_bf16.json"
cat "$OUT/bench_burn_bf16.json" 2>/dev/null

# (d) the table
python3 - "$OUT" "$CONF_RC" "$NCCL_RC" <<'EOF'
import json, os, sys
out, conf_rc, nccl_rc = sys.argv[1], sys.argv[2], sys.argv[3]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            text = f.read()
    except OSError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        if line.strip().startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None
def status(rc):
    return {"0": "passed", "124": "timed out or skipped"}.get(rc, f"failed (exit {rc})")
torch, burn, bf16 = load("bench_torch.json"), load("bench_burn.json"), load("bench_burn_bf16.json")
gpu = (torch or {}).get("gpu", "?")
rows = ["| MHCL step, ResNet-50, 224 px, batch 64, K 65536, 8 scales, MLP | ms/step (median) | images/s | vs PyTorch |",
        "| --- | ---: | ---: | ---: |"]
base = torch and torch.get("images_per_s")
def row(label, r):
    if not r:
        rows.append(f"| {label} | not run / failed | | |")
        return
    ips = r.get("images_per_s")
    ratio = f"{ips / base:.2f}x" if base and ips else ""
    rows.append(f"| {label} | {r.get('ms_per_step')} | {ips} | {ratio} |")
row(f"PyTorch {(torch or {}).get('torch', '?')} CUDA, f32 (cuDNN default: TF32 convolutions)", torch)
row(f"burn 0.22.1 ({(burn or {}).get('backend', 'burn-wgpu-vulkan')}), f32", burn)
row(f"burn 0.22.1 ({(bf16 or {}).get('backend', 'burn-wgpu-vulkan')}), --precision bf16", bf16)
conf = load("conformance.json")
if conf:
    rows.append("")
    rows.append(f"Conformance on --device {conf.get('device')}: {conf.get('passed')} cases passed, "
                f"{conf.get('failed')} failed.")
else:
    rows.append("")
    rows.append(f"Conformance: {status(conf_rc)}.")
rows.append(f"NCCL check: {status(nccl_rc)}. GPU: {gpu}.")
text = "\n".join(rows) + "\n"
print("== (d) table\n" + text)
with open(os.path.join(out, "gpu-table.md"), "w") as f:
    f.write(text)
EOF
echo "== done after $(elapsed)s"
