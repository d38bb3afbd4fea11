#!/usr/bin/env python3
"""Writes ssl-augment/tests/fixtures/bands: multi-band TIFFs from an independent writer (this
file's, plus Pillow's for the 1-band cases) and the expected results of Pillow's float ("F")
bilinear resize and torchvision's tensor gaussian_blur, in cases.json.

Needs numpy, Pillow and torch/torchvision (the reference venv):
    python scripts/make-band-fixtures.py ssl-augment/tests/fixtures/bands
"""
import json
import os
import struct
import sys

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image


def write_tiff(path, arr, planar, photometric=1):
    """Baseline little-endian TIFF, uncompressed, one strip (per plane when planar).
    arr: (bands, h, w) of uint8, uint16 or float32."""
    bands, h, w = arr.shape
    fmt = {np.dtype("uint8"): 1, np.dtype("uint16"): 1, np.dtype("float32"): 3}[arr.dtype]
    bits = arr.dtype.itemsize * 8
    if planar:
        strips = [np.ascontiguousarray(arr[b]).tobytes() for b in range(bands)]
    else:
        strips = [np.ascontiguousarray(arr.transpose(1, 2, 0)).tobytes()]
    entries = []
    extra = b""
    offset_base = 8  # header
    data = b"".join(strips)
    data_off = offset_base
    strip_offsets = []
    o = data_off
    for s in strips:
        strip_offsets.append(o)
        o += len(s)
    extra_off = o

    def array(values, typ):
        nonlocal extra
        size = {3: 2, 4: 4}[typ]
        if len(values) * size <= 4:
            packed = b"".join(struct.pack("<H" if typ == 3 else "<I", v) for v in values)
            return packed.ljust(4, b"\0"), None
        off = extra_off + len(extra)
        extra += b"".join(struct.pack("<H" if typ == 3 else "<I", v) for v in values)
        if len(extra) % 2:
            extra += b"\0"
        return struct.pack("<I", off), None

    def entry(tag, typ, values):
        value, _ = array(values, typ)
        entries.append(struct.pack("<HHI", tag, typ, len(values)) + value)

    entry(256, 4, [w])
    entry(257, 4, [h])
    entry(258, 3, [bits] * bands)
    entry(259, 3, [1])
    entry(262, 3, [photometric])
    entry(273, 4, strip_offsets)
    entry(277, 3, [bands])
    entry(278, 4, [h])
    entry(279, 4, [len(s) for s in strips])
    entry(284, 3, [2 if planar else 1])
    base = 3 if photometric == 2 else 1
    if bands > base:
        entry(338, 3, [0] * (bands - base))
    entry(339, 3, [fmt] * bands)
    ifd_off = extra_off + len(extra)
    if ifd_off % 2:
        extra += b"\0"
        ifd_off += 1
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    with open(path, "wb") as f:
        f.write(b"II*\0" + struct.pack("<I", ifd_off) + data + extra + ifd)


def main(out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {}

    def record(name, arr, scale):
        files[name] = {
            "shape": list(arr.shape),
            "values": (arr.astype(np.float64) / scale).astype(np.float32).ravel().tolist(),
        }

    a = rng.integers(0, 65536, size=(13, 4, 5), dtype=np.uint16)
    write_tiff(f"{out}/planar_u16_13.tif", a, planar=True)
    record("planar_u16_13.tif", a, 65535.0)

    a = rng.integers(0, 65536, size=(13, 4, 5), dtype=np.uint16)
    write_tiff(f"{out}/chunky_u16_13.tif", a, planar=False)
    record("chunky_u16_13.tif", a, 65535.0)

    a = (rng.standard_normal(size=(4, 3, 6)) * 5).astype(np.float32)
    write_tiff(f"{out}/chunky_f32_4.tif", a, planar=False)
    record("chunky_f32_4.tif", a, 1.0)

    a = rng.integers(0, 256, size=(6, 3, 2), dtype=np.uint8)
    write_tiff(f"{out}/planar_u8_6.tif", a, planar=True)
    record("planar_u8_6.tif", a, 255.0)

    a = rng.integers(0, 65536, size=(3, 5, 4), dtype=np.uint16)
    write_tiff(f"{out}/rgb_u16.tif", a, planar=False, photometric=2)
    record("rgb_u16.tif", a, 65535.0)

    a = rng.integers(0, 65536, size=(5, 7), dtype=np.uint16)
    Image.fromarray(a).save(f"{out}/gray16_pillow.tif")
    record("gray16_pillow.tif", a[None], 65535.0)

    a = (rng.standard_normal(size=(5, 7)) * 100).astype(np.float32)
    Image.fromarray(a, mode="F").save(f"{out}/float_pillow_lzw.tif", compression="tiff_lzw")
    record("float_pillow_lzw.tif", a[None], 1.0)

    a = (rng.standard_normal(size=(2, 3, 3))).astype(np.float32)
    a[1, 2, 1] = np.nan
    write_tiff(f"{out}/nan_f32.tif", a, planar=True)

    a = rng.integers(0, 65536, size=(40, 2, 2), dtype=np.uint16)
    write_tiff(f"{out}/bands_40.tif", a, planar=True)

    a = rng.integers(-100, 100, size=(2, 3, 3)).astype(np.int16)
    # signed integers: written by hand with SampleFormat 2
    write_tiff(f"{out}/int16.tif", a.view(np.uint16), planar=True)
    with open(f"{out}/int16.tif", "r+b") as f:
        raw = bytearray(f.read())
    # patch SampleFormat values (tag 339) from 1 to 2
    ifd_off = struct.unpack_from("<I", raw, 4)[0]
    n = struct.unpack_from("<H", raw, ifd_off)[0]
    for i in range(n):
        e = ifd_off + 2 + 12 * i
        tag, typ, count = struct.unpack_from("<HHI", raw, e)
        if tag == 339:
            struct.pack_into("<HH", raw, e + 8, 2, 2)
    with open(f"{out}/int16.tif", "wb") as f:
        f.write(raw)

    resize = []
    for (h, w, oh, ow) in [(13, 17, 7, 5), (9, 11, 20, 14), (30, 8, 6, 8), (6, 30, 6, 7), (16, 16, 16, 16)]:
        x = (rng.standard_normal(size=(h, w)) * 3).astype(np.float32)
        y = np.asarray(Image.fromarray(x, mode="F").resize((ow, oh), Image.BILINEAR))
        resize.append({"in": list(x.shape), "x": x.ravel().tolist(), "out": [oh, ow], "y": y.ravel().tolist()})

    blur = []
    for (h, w, k, s) in [(9, 11, 5, 1.3), (12, 7, 7, 2.0), (6, 6, 3, 0.4)]:
        x = torch.from_numpy((rng.standard_normal(size=(2, h, w))).astype(np.float32))
        y = TF.gaussian_blur(x, [k, k], [s, s])
        blur.append({"in": list(x.shape), "x": x.ravel().tolist(), "kernel": k, "sigma": s, "y": y.ravel().tolist()})

    with open(f"{out}/cases.json", "w") as f:
        json.dump({"files": files, "resize": resize, "blur": blur}, f)


if __name__ == "__main__":
    main(sys.argv[1])
