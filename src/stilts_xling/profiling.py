"""Where a training step's time goes: `stilts bench --profile N` runs N more steps of each stilts variant
under torch.profiler and records the kernels (CUDA) or operators (CPU) by self time, per step.

The categories answer the questions the speed work keeps asking: how much of a step is matrix multiplies
versus attention, the optimizer, element-wise work and memory traffic, and how much the device sits idle
(wall time minus busy time: launch overhead or host syncs)."""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable

import torch

# Category -> substrings of kernel names (lower case), first match wins; the rest is "other".
CATEGORIES = {
    "optimizer": ("adam", "foreach", "multi_tensor"),
    "attention": ("flash", "fmha", "attention", "sdpa"),
    "matmul": ("gemm", "cutlass", "sm90_", "sm80_", "cublas", "nvjet", "matmul", "addmm", "mm_", "::mm", "::bmm"),
    "embedding": ("embedding", "index_add", "indexing_backward", "index_select", "scatter", "gather"),
    "layernorm": ("layer_norm", "layernorm"),
    "memset/copy": ("memset", "memcpy", "copy_", "fill"),
    "fused (triton)": ("triton",),
    "elementwise": ("elementwise", "vectorized", "unrolled", "reduce", "dropout", "gelu"),
}


def _self_us(event, cuda: bool) -> float:
    names = ("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",)
    for name in names:
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


def category(name: str) -> str:
    low = name.lower()
    return next((cat for cat, keys in CATEGORIES.items() if any(k in low for k in keys)), "other")


def profile_steps(run_step: Callable[[], None], steps: int, device: torch.device, top: int = 40) -> dict:
    """{"steps", "wall_ms_per_step", "busy_ms_per_step", "categories": {cat: ms/step}, "top": [{"name",
    "category", "ms_per_step", "calls_per_step"}]}; busy = summed self time of kernels (CUDA) or operators
    (CPU), so on CUDA wall - busy is time the GPU had nothing to run."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            run_step()
        sync()
        wall = time.perf_counter() - start
    # Device-side events only on CUDA (kernels, memcpy, memset): operator events also carry the time of the
    # kernels they launched, so counting both would count it twice (and CUPTI markers such as "Command
    # Buffer Full" are host-side waits, not work).
    kind = DeviceType.CUDA if cuda else DeviceType.CPU
    rows = sorted(((e.key, _self_us(e, cuda), e.count) for e in prof.key_averages()
                   if getattr(e, "device_type", kind) == kind), key=lambda r: -r[1])
    rows = [r for r in rows if r[1] > 0]
    cats: dict[str, float] = defaultdict(float)
    for name, us, _ in rows:
        cats[category(name)] += us / steps / 1000
    return {
        "steps": steps, "wall_ms_per_step": 1000 * wall / steps,
        "busy_ms_per_step": sum(us for _, us, _ in rows) / steps / 1000,
        "categories": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
        "top": [{"name": name[:120], "category": category(name), "ms_per_step": us / steps / 1000,
                 "calls_per_step": count / steps} for name, us, count in rows[:top]],
    }


def format_profile(label: str, prof: dict, top: int = 15) -> str:
    """The categories and the `top` kernels (the JSON keeps more: a device session is too short to rerun)."""
    lines = [f"{label}: wall {prof['wall_ms_per_step']:.1f} ms/step, busy {prof['busy_ms_per_step']:.1f} ms/step; "
             + ", ".join(f"{k} {v:.2f}" for k, v in prof["categories"].items())]
    lines += [f"  {r['ms_per_step']:8.3f} ms  {r['calls_per_step']:7.1f}x  [{r['category']}] {r['name']}"
              for r in prof["top"][:top]]
    return "\n".join(lines)
