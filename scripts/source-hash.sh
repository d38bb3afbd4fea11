#!/usr/bin/env bash
# Prints one sha256 over the sources a GPU bundle is built from: every *.rs, Cargo.toml and
# Cargo.lock under the repository root (build outputs, the bundle and git's own folder left out),
# by path and content. scripts/build-gpu-bundle.sh bakes it into gpu_check
# (GPU_CHECK_SOURCE_HASH); scripts/gpu-check.sh computes it again over the tree it runs in and
# refuses a bundle built from other sources. Needs only find, sort and sha256sum (no git: the
# GPU machine's copy of the tree may have none).
set -euo pipefail
cd "$(dirname "$0")/.."
find . \( -path ./target -o -path ./.git -o -path ./.gpu-bin -o -path ./.gl -o -path ./fuzz/target \) -prune \
    -o -type f \( -name '*.rs' -o -name Cargo.toml -o -name Cargo.lock \) -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
