#!/usr/bin/env python3
"""The gradient step peerless times, done by PyTorch, for `peerless bench --torch PYTHON`.

One configuration per process (so peak memory is per configuration):
    step.py MODEL BATCH SIZE STEPS WARMUP THREADS
times zero_grad + forward + cross-entropy + backward + flattening every gradient into one
preallocated f32 buffer, on random 3xSIZExSIZE inputs, and prints one JSON object.
"""
import json
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision


def main():
    name, batch, size, steps, warmup, threads = sys.argv[1:7]
    batch, size, steps, warmup, threads = map(int, (batch, size, steps, warmup, threads))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10)
    model.train()
    x = torch.rand(batch, 3, size, size) * 2 - 1
    y = torch.randint(0, 10, (batch,))
    params = list(model.parameters())
    flat = torch.empty(sum(p.numel() for p in params))

    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        torch.cat([p.grad.reshape(-1) for p in params], out=flat)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    print(json.dumps({
        "ms_per_step": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
