#!/usr/bin/env python3
"""Where PyTorch's MHCL training step spends its time on the CPU: torch.profiler over a few
steps of the reference model (../shared/reference/mhcl_ref.py), as `bench_step.py` runs it
(fixed random inputs, SGD momentum 0.9, weight decay 1e-4, MLP head, K 4096, dim 128), printing
the operators by their own CPU time.

    python3 scripts/profile-torch-step.py [ARCH] [BATCH] [SIZE] [STEPS] [--shapes]
    python3 scripts/profile-torch-step.py resnet50 32 112 3

--shapes prints instead the convolutions' forward and backward per input shape, in ms per
step (to set beside `cargo run --release -p ssl-models --example conv_bench` of each shape).

Environment: REFERENCE_DIR (default ../shared/reference), THREADS (default 2).
"""

import os
import sys

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.environ.get("REFERENCE_DIR", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "reference")))
import mhcl_ref as R  # noqa: E402


def main():
    shapes = "--shapes" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--shapes"]
    arch = args[0] if args else "resnet18"
    batch, size, steps = (int(v) for v in (args[1:4] + ["32", "64", "3"][len(args[1:4]):]))
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    torch.manual_seed(0)
    model = R.MHCL(arch, 64, 128, 4096, 0.99, 0.2, mlp=True, mhcl=True,
                   rng=np.random.RandomState(0))
    model.train()
    opt = torch.optim.SGD(model.parameters(), 0.03, momentum=0.9, weight_decay=1e-4)
    im_q, im_k = torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)

    def step():
        loss = model(im_q, im_k)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
        for _ in range(steps):
            step()
    if not shapes:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key in ("aten::mkldnn_convolution", "aten::convolution_backward"):
            print(f"{e.key:28s} {e.self_cpu_time_total / 1e3 / steps:8.2f} ms/step "
                  f"{e.count / steps:4.1f} calls/step  {e.input_shapes[:3]}")


if __name__ == "__main__":
    main()
