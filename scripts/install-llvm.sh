#!/usr/bin/env bash
# Installs the LLVM 23 static SDK that burn's `cuda` feature links (cubecl-cuda -> cubecl-llvm ->
# tracel-llvm-bundler 23.1.0-4) from PyPI, so that the build downloads nothing from GitHub.
#
# tracel-llvm-bundler looks in `${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-23.1.0-4/`
# and downloads nothing when `.tracel-llvm-installed` exists there; everything else it reads from
# `<dir>/bin/llvm-config --link-static`. PyPI's `mlc-llvm-static` wheels (23.1.1) ship exactly
# that layout; the NVPTX target is in the second wheel, so both are unpacked into one folder.
#
# Idempotent (a complete install is left alone), needs no root. Environment:
#   LLVM_SDK_DIR    where the wheels are downloaded and unpacked (default ~/.cache/mhcl-llvm-23;
#                   about 90 MB downloaded, 400 MB unpacked)
#   XDG_DATA_HOME   as the bundler reads it
#   PYTHON          python with pip (default python3; llvm-config is a Python 3.10+ script)
set -euo pipefail
PY=${PYTHON:-python3}
SDK=${LLVM_SDK_DIR:-$HOME/.cache/mhcl-llvm-23}
DEST=${XDG_DATA_HOME:-$HOME/.local/share}/tracel
LINK=$DEST/tracel-llvm-23.1.0-4
MARKER=$LINK/.tracel-llvm-installed
VERSION=23.1.1.post0

if [ -f "$MARKER" ] && [ -x "$LINK/bin/llvm-config" ]; then
    echo "LLVM for cubecl already installed: $LINK"
    exit 0
fi
command -v "$PY" >/dev/null || { echo "error: $PY not found (needed for pip and llvm-config)" >&2; exit 1; }
command -v unzip >/dev/null || { echo "error: unzip not found" >&2; exit 1; }

mkdir -p "$SDK/whl"
if ! ls "$SDK"/whl/mlc_llvm_static-"$VERSION"-*.whl >/dev/null 2>&1 ||
    ! ls "$SDK"/whl/mlc_llvm_static_extra_targets-"$VERSION"-*.whl >/dev/null 2>&1; then
    echo "== downloading mlc-llvm-static $VERSION (+ extra targets) from PyPI"
    "$PY" -m pip download --quiet --no-deps -d "$SDK/whl" \
        "mlc-llvm-static==$VERSION" "mlc-llvm-static-extra-targets==$VERSION"
fi
echo "== unpacking into $SDK/sdk"
rm -rf "$SDK/sdk.partial"
for w in "$SDK"/whl/*.whl; do unzip -qo "$w" -d "$SDK/sdk.partial"; done
STATIC=$SDK/sdk.partial/mlc_llvm_static/static
[ -f "$STATIC/bin/llvm-config" ] || { echo "error: $STATIC/bin/llvm-config missing after unpacking" >&2; exit 1; }
chmod +x "$STATIC/bin/llvm-config"
"$PY" "$STATIC/bin/llvm-config" --targets-built | grep -qw NVPTX ||
    { echo "error: the unpacked LLVM has no NVPTX target" >&2; exit 1; }
rm -rf "$SDK/sdk"
mv "$SDK/sdk.partial" "$SDK/sdk"

mkdir -p "$DEST"
ln -sfn "$SDK/sdk/mlc_llvm_static/static" "$LINK"
touch "$MARKER"
echo "LLVM for cubecl installed: $LINK -> $SDK/sdk/mlc_llvm_static/static"
