"""`stilts bench`: stilts's training step against the plain Hugging Face Trainer, same GPU, same data.

Both train XLM-R Large (random init from an explicit config: no hub, no tokenizer) on synthetic batches
shaped like the paper's tasks, with the same batch size and hyperparameters (AdamW lr 1e-5, weight decay
0.01, linear schedule with 10% warmup, clipping at 1.0, bf16 autocast on CUDA):

mnli, squad and hellaswag (bench_data.py, with how the Trainer pads each), and mnli@16k: stilts only, ~16k
real tokens per step (the MFU target's regime).

Reported per run: samples/s, real (non-pad) tokens/s, computed tokens/s, MFU on real tokens =
6 * N * real tokens/s / peak, with N the encoder's non-embedding parameters (302M for XLM-R Large;
embedding lookups do no matmul work; attention-score FLOPs are not counted, so MFU is slightly
understated) and peak the dense bf16 tensor-core FLOP/s of the device (PEAK_BF16_FLOPS, by device name);
peak memory allocated and reserved (torch.cuda.max_memory_*; None on CPU; the memory ratio uses
reserved, which counts CUDA-graph pools); setup time (model build, CUDA graph capture, compilation: not
in the throughput; compiled code is reused by later runs in the same process). stilts runs once per speed
variant; its best variant is compared.
On CPU it runs a tiny model (2 layers, hidden 32) so that the command itself is tested; no timing claims.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch

from .bench_data import (SHAPES, XLMR_LARGE, XLMR_TINY, Shape, _config, _rows, _spec,  # noqa: F401  (bench.*)
                         synthetic_features)
from . import into_grad
from .files import write_atomic
from .flat_adamw import FlatAdamW
from .profiling import format_profile, profile_steps
from .speed import SpeedConfig

log = logging.getLogger(__name__)

# Dense bf16 tensor-core peak FLOP/s by device-name substring (first match wins; NVIDIA datasheets).
PEAK_BF16_FLOPS = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
                   ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10G", 70e12)]

# In run order: the plain loop first, then the riskier paths (a CUDA fault ends the runs after it).
VARIANTS = {
    "padded": SpeedConfig(),  # train.py's defaults: length-grouped padded batches, eager
    "padded/32": SpeedConfig(pad_multiple=32),  # the same with 4 widths up to 128 instead of 16
    "unpadded+graphs": SpeedConfig(unpadded=True, cuda_graphs=True, workers=1),
    "unpadded+graphs+compile": SpeedConfig(unpadded=True, cuda_graphs=True, compile=True, workers=1),
    # The same with AdamW over flat buffers: one norm and one (Triton) update kernel a step.
    "unpadded+graphs+compile+flat": SpeedConfig(unpadded=True, cuda_graphs=True, compile=True, workers=1,
                                                flat_adamw=True),
    # ... and weight gradients accumulated in fp32 by the GEMM itself (no cast, no add).
    "unpadded+graphs+compile+flat+wgrad": SpeedConfig(unpadded=True, cuda_graphs=True, compile=True, workers=1,
                                                      flat_adamw=True, fused_wgrad=True),
    # ... and word-embedding rows stepped when looked up, not all 250k every step (exact; lazy_rows.py).
    "unpadded+graphs+compile+flat+wgrad+lazy": SpeedConfig(unpadded=True, cuda_graphs=True, compile=True, workers=1,
                                                           flat_adamw=True, fused_wgrad=True, lazy_embedding=True),
    # ... with cuDNN's varlen attention instead of flash-attention 2's (smaller tiles for short sequences).
    "unpadded+graphs+compile+flat+wgrad+cudnn": SpeedConfig(unpadded=True, cuda_graphs=True, compile=True, workers=1,
                                                            flat_adamw=True, fused_wgrad=True, attention="cudnn"),
    "unpadded+graphs+compile+flat+wgrad+lazy+cudnn": SpeedConfig(
        unpadded=True, cuda_graphs=True, compile=True, workers=1, flat_adamw=True, fused_wgrad=True,
        lazy_embedding=True, attention="cudnn"),
    # ... with micro batches of at most 2048 real tokens: the graphs' pool holds the activations of the largest
    # bucket (~4k tokens at MNLI batch 32, where 18% of batches exceed 2048), the memory target's margin.
    "unpadded+graphs+compile+flat+wgrad+lazy+cudnn+budget2048": SpeedConfig(
        unpadded=True, cuda_graphs=True, compile=True, workers=1, flat_adamw=True, fused_wgrad=True,
        lazy_embedding=True, attention="cudnn", token_budget=2048),
    "unpadded+compile": SpeedConfig(unpadded=True, compile=True, workers=1),
    "unpadded": SpeedConfig(unpadded=True, workers=1),
    "unpadded+flat": SpeedConfig(unpadded=True, workers=1, flat_adamw=True),
    "unpadded+flat+lazy": SpeedConfig(unpadded=True, workers=1, flat_adamw=True, lazy_embedding=True),
}
CPU_VARIANTS = ["padded", "unpadded", "unpadded+flat", "unpadded+flat+lazy"]


# ---------------------------------------------------------------------------------------------------
# Runs.


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fresh(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> dict[str, Optional[float]]:
    """Peak allocated and peak reserved memory. CUDA graphs replay into pool blocks the allocator counts
    as free once captured, so `reserved` is the honest figure for them; the memory target uses it."""
    if device.type != "cuda":
        return {"peak_memory_gb": None, "peak_reserved_gb": None}
    return {"peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2 ** 30,
            "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 2 ** 30,
            # Reserved but unusable for a larger request: the allocator's fragmentation at its worst.
            "peak_inactive_split_gb": torch.cuda.memory_stats(device).get("inactive_split_bytes.all.peak", 0) / 2 ** 30}


def _matmul_params(tiny: bool) -> int:
    from transformers import AutoModel

    with torch.device("meta"):
        encoder = AutoModel.from_config(_config(tiny), add_pooling_layer=False)
    return sum(p.numel() for name, p in encoder.named_parameters() if not name.startswith("embeddings."))


def _hp(lr: float, batch_size: int, max_length: int):
    from .config import TrainConfig, merge_train

    return merge_train(TrainConfig(lr=lr, batch_size=batch_size, max_length=max_length, epochs=1))


def run_stilts(shape: Shape, features: list[dict], speed: SpeedConfig, batch_size: int, steps: int, warmup: int,
               device: torch.device, tiny: bool, lr: float, seed: int, profile: int = 0) -> dict:
    """stilts's own path: MultiTaskModel, train.py's step, the speed plan; `profile` more steps after the
    timed ones run under torch.profiler (profiling.py)."""
    from transformers import AutoModel

    from . import train as train_mod
    from .model import MultiTaskModel
    from .speed import prepare

    _fresh(device)
    built = time.perf_counter()
    torch.manual_seed(seed)
    bf16 = device.type == "cuda"
    spec = _spec(shape)
    with torch.device(device):
        encoder = AutoModel.from_config(_config(tiny), add_pooling_layer=False)
        model = MultiTaskModel(encoder, [spec])
    hp = _hp(lr, batch_size, shape.max_length)
    total = warmup + steps
    optimizer = train_mod._optimizer(model, hp, fused=device.type == "cuda", flat=speed.flat_adamw,
                                     lazy=speed.lazy_embedding)
    scheduler = train_mod._linear_schedule(optimizer, int(hp.warmup * total), total)
    plan = prepare(model, speed, device, bf16, pad_id=1, max_seqlen=shape.max_length)
    max_rows = batch_size * shape.choices
    model.train()
    # Every batch shape the run will meet gets its one-time costs (graph capture, compilation, cuDNN and
    # cuBLAS start-up) paid before the clock starts, the largest graph bucket first as train() does: a
    # probe stream with the same seed yields the same batches. A long training run pays these once; the
    # Trainer, with one padded shape, pays them in its warm-up steps.
    schedule, accum, rows = [spec.name] * (total + profile), {spec.name: 1}, {spec.name: max_rows}

    def new_stream() -> train_mod._Stream:
        return train_mod._Stream(features, batch_size, seed)

    plan.reserve(train_mod.largest_micro_batches(plan, schedule, {spec.name: new_stream()}, accum, rows))
    probe = new_stream()
    for _ in schedule:
        for micro in plan.step_batches([probe.next()], max_rows):
            plan.prewarm(micro.batch)
    batches = train_mod.step_batches(plan, schedule, {spec.name: new_stream()}, accum, rows, speed.workers)
    losses: list[torch.Tensor] = []
    samples = real = computed = 0
    start = time.perf_counter()
    setup_s = start - built
    def step(task: str, micro_batches: list) -> list[torch.Tensor]:
        return train_mod.train_step(model, task, micro_batches, optimizer, scheduler, None, hp.max_grad_norm,
                                    device, bf16, plan.keep_grads)

    for i, (task, micro_batches) in zip(range(total), batches):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
            setup_s = start - built
            losses, samples, real, computed = [], 0, 0, 0
        losses += step(task, micro_batches)
        samples += sum(m.examples for m in micro_batches)
        real += sum(m.real_tokens for m in micro_batches)
        computed += sum(m.computed_tokens for m in micro_batches)
    _sync(device)
    elapsed = time.perf_counter() - start
    loss = torch.stack(losses).float().mean().item()
    profiled = profile_steps(lambda: step(*next(batches)), profile, device) if profile else None
    result = {
        "speed": dataclasses.asdict(speed), "unpadded": plan.unpadded, "cuda_graphs": plan.graphs is not None,
        "compiled": bool(plan.compiled), "attention": plan.attention, "optimizer": _optimizer_kind(optimizer),
        "fused_wgrad_layers": len(plan.graphs.fused_linears) if plan.graphs else 0,
        "fused_wgrad_in_gemm": into_grad._ADDMM_OUT_DTYPE.get(device.type),  # None: never asked
        "graph_buckets": sorted(k for k, e in plan.graphs.entries.items() if e is not None) if plan.graphs else [],
        "graph_failures": plan.graphs.failed if plan.graphs else [],
        "graph_pool_gb": plan.graphs.pool_gb() if plan.graphs else None,
        **_rates(samples, real, computed, elapsed, steps), "loss": loss, **_peak_gb(device), "setup_s": setup_s,
        **({"profile": profiled} if profiled else {}),
    }
    plan.close()
    if not math.isfinite(loss):
        result["error"] = f"non-finite loss {loss}"
    return result


def _optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    if isinstance(optimizer, FlatAdamW):
        kind = "FlatAdamW (Triton)" if optimizer.kernel is not None else "FlatAdamW (torch kernels)"
        return kind + (", lazy embedding rows" if optimizer.lazy is not None else "")
    return "AdamW (fused)" if optimizer.defaults.get("fused") else "AdamW"


def _rates(samples: int, real: int, computed: int, elapsed: float, steps: int) -> dict:
    return {"steps": steps, "seconds": elapsed, "step_ms": 1000 * elapsed / steps, "samples_per_s": samples / elapsed,
            "real_tokens_per_s": real / elapsed, "computed_tokens_per_s": computed / elapsed,
            "real_tokens_per_step": real / steps}


# ---------------------------------------------------------------------------------------------------
# The whole benchmark.


def peak_flops(device: torch.device) -> tuple[Optional[float], str]:
    if device.type != "cuda":
        return None, "no peak for CPU"
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops, f"{name}: dense bf16 {flops / 1e12:.0f} TFLOP/s ({key})"
    return None, f"{name}: unknown peak; pass peak_flops"


def run_bench(shapes: tuple[str, ...] = ("mnli", "squad", "hellaswag"), steps: int = 30, warmup: int = 5,
              batch_size: int = 32, device: Optional[str] = None, tiny: Optional[bool] = None,
              out_json: Optional[str | Path] = None, variants: Optional[list[str]] = None,
              tokens_per_step: Optional[int] = 16384, trainer: bool = True, time_budget_s: Optional[float] = None,
              peak: Optional[float] = None, lr: float = 1e-5, seed: int = 0, profile: int = 0) -> dict:
    """Benchmark; returns (and writes to `out_json` after every run, so a cut-off run keeps its results):

    {"device", "torch", "transformers", "model", "matmul_params", "peak_flops", "peak_flops_source",
     "mfu_formula", "batch_size", "steps", "warmup", "lr",
     "shapes": {shape: {"batch_size", "real_tokens_per_sample", "trainer": RUN, "variants": {name: RUN},
                        "stilts": RUN + {"variant"}, "ratio", "memory_ratio"}},
     "targets": {...}}
    RUN = {"samples_per_s", "real_tokens_per_s", "computed_tokens_per_s", "mfu_real", "peak_memory_gb",
           "peak_reserved_gb", "step_ms", "setup_s", "loss", ...} or {"error": ...} / {"skipped": ...}.
    `shape` includes "mnli@16k" (stilts only, ~`tokens_per_step` real tokens a step) when tokens_per_step."""
    import transformers

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tiny = dev.type != "cuda" if tiny is None else tiny
    variants = variants or (CPU_VARIANTS if dev.type != "cuda" else list(VARIANTS))
    unknown = [v for v in variants if v not in VARIANTS] + [s for s in shapes if s not in SHAPES]
    if unknown:
        raise ValueError(f"unknown variant/shape {unknown}; variants: {', '.join(VARIANTS)}; "
                         f"shapes: {', '.join(SHAPES)}")
    flops, flops_source = (peak, "given") if peak else peak_flops(dev)
    n_matmul = _matmul_params(tiny)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "model": ("tiny XLM-R (2 layers, hidden 32)" if tiny else "XLM-R Large architecture") + ", random init",
        "matmul_params": n_matmul, "peak_flops": flops, "peak_flops_source": flops_source,
        "mfu_formula": "6 * matmul_params * real_tokens_per_s / peak_flops",
        "batch_size": batch_size, "steps": steps, "warmup": warmup, "lr": lr, "shapes": {},
    }
    vocab = (XLMR_TINY if tiny else XLMR_LARGE)["vocab_size"]
    cases = []  # (key, shape, batch size, with trainer)
    for name in shapes:
        cases.append((name, SHAPES[name], batch_size, trainer))
        if name == "mnli" and tokens_per_step:
            tag = f"{tokens_per_step // 1024}k" if tokens_per_step % 1024 == 0 else str(tokens_per_step)
            cases.append((f"mnli@{tag}", SHAPES[name],
                          max(1, round(tokens_per_step / SHAPES[name].mean)), False))
    data = {}
    for key, shape, bs, _ in cases:
        data[key] = synthetic_features(shape, (warmup + steps) * bs, vocab, seed)
        report["shapes"][key] = {"batch_size": bs, "real_tokens_per_sample": sum(
            len(r) for f in data[key] for r in _rows(f)) / len(data[key]), "variants": {}}
    # Baselines first, then variant by variant (a time budget or a cut-off keeps what ran).
    runs = [(key, "trainer") for key, _, _, with_trainer in cases if with_trainer]
    runs += [(key, v) for v in variants for key, *_ in cases]
    started = time.perf_counter()
    for key, what in runs:
        shape, bs = next((s, b) for k, s, b, _ in cases if k == key)
        entry = report["shapes"][key]
        if time_budget_s is not None and time.perf_counter() - started > time_budget_s:
            result: dict[str, Any] = {"skipped": f"time budget of {time_budget_s:.0f} s spent"}
        else:
            log.info("bench %s: %s", key, what)
            try:
                if what == "trainer":
                    from .bench_trainer import run_trainer  # here: it imports this module's helpers

                    result = run_trainer(shape, data[key], bs, steps, warmup, dev, tiny, lr, seed)
                else:
                    result = run_stilts(shape, data[key], VARIANTS[what], bs, steps, warmup, dev, tiny, lr, seed,
                                        profile)
            except Exception as err:  # one failing variant must not lose the others' numbers
                log.exception("bench %s %s failed", key, what)
                result = {"error": f"{type(err).__name__}: {err}"}
                _fresh(dev)
        if "real_tokens_per_s" in result:
            result["mfu_real"] = 6 * n_matmul * result["real_tokens_per_s"] / flops if flops else None
        if what == "trainer":
            entry["trainer"] = result
        else:
            entry["variants"][what] = result
        _summarize(entry)
        report["targets"] = _targets(report) if dev.type == "cuda" else {}
        report["elapsed_s"] = time.perf_counter() - started
        if out_json:
            write_atomic(Path(out_json), json.dumps(report, indent=1))
    return report


def _summarize(entry: dict) -> None:
    done = {k: v for k, v in entry["variants"].items() if "samples_per_s" in v and "error" not in v}
    if not done:
        return
    best = max(done, key=lambda k: done[k]["samples_per_s"])
    entry["stilts"] = {"variant": best, **done[best]}
    base = entry.get("trainer", {})
    if "samples_per_s" in base:
        entry["ratio"] = entry["stilts"]["samples_per_s"] / base["samples_per_s"]
        if base.get("peak_reserved_gb") and entry["stilts"].get("peak_reserved_gb"):
            entry["memory_ratio"] = entry["stilts"]["peak_reserved_gb"] / base["peak_reserved_gb"]


def _targets(report: dict) -> dict:
    """The issue's targets, where this run measured them (meaningful on an H100/H200 only)."""
    out = {}
    mnli = report["shapes"].get("mnli", {})
    if "ratio" in mnli:
        out["mnli_b32_ratio_ge_5"] = {"value": mnli["ratio"], "met": mnli["ratio"] >= 5}
    big = [(k, e["stilts"]) for k, e in report["shapes"].items() if "stilts" in e
           and e["stilts"]["real_tokens_per_step"] >= 16000 and e["stilts"].get("mfu_real") is not None]
    if big:
        key, run = max(big, key=lambda kv: kv[1]["mfu_real"])
        out["mfu_real_ge_0.40_at_16k_tokens"] = {"shape": key, "value": run["mfu_real"], "met": run["mfu_real"] >= 0.40}
    mem = {k: e["memory_ratio"] for k, e in report["shapes"].items() if "memory_ratio" in e}
    if mem:
        out["peak_memory_le_trainer"] = {"ratios": mem, "met": all(v <= 1 for v in mem.values())}
    trainer = mnli.get("trainer", {})
    if trainer.get("samples_per_s") and trainer.get("peak_reserved_gb"):
        # One configuration for both: the fastest variant need not be the leanest.
        both = [name for name, r in mnli["variants"].items() if "error" not in r
                and r.get("samples_per_s", 0) >= 5 * trainer["samples_per_s"]
                and 0 < (r.get("peak_reserved_gb") or 0) <= trainer["peak_reserved_gb"]]
        out["mnli_b32_5x_within_trainer_memory"] = {"variants": both, "met": bool(both)}
    return out


def main(argv: Optional[list[str]] = None) -> None:
    """`python -m stilts_xling.bench` (the same options as `stilts bench`), for machines without the CLI."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="mnli,squad,hellaswag")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None)
    parser.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--variants", default=None, help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--tokens-per-step", type=int, default=16384, help="0: no mnli@16k row")
    parser.add_argument("--no-trainer", action="store_true")
    parser.add_argument("--time-budget", type=float, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--profile", type=int, default=0, help="profile this many extra steps per stilts run")
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run_bench(tuple(s for s in a.shapes.split(",") if s), a.steps, a.warmup, a.batch_size, a.device,
                       a.tiny, a.out, a.variants.split(",") if a.variants else None, a.tokens_per_step or None,
                       not a.no_trainer, a.time_budget, profile=a.profile)
    print(format_table(report))
    print(json.dumps(report))


def format_table(report: dict) -> str:
    w = max([26] + [len(name) for entry in report["shapes"].values() for name in entry["variants"]])
    lines = [f"{report['device']} | {report['model']} | torch {report['torch']} | transformers "
             f"{report['transformers']} | peak {report['peak_flops_source']}",
             f"{'shape':<12} {'run':<{w}} {'samples/s':>10} {'real tok/s':>11} {'MFU real':>9} {'alloc/res GB':>13} "
             f"{'step ms':>8} {'setup s':>8}  attention"]
    for key, entry in report["shapes"].items():
        runs = ([("trainer", entry["trainer"])] if "trainer" in entry else []) + list(entry["variants"].items())
        for name, r in runs:
            if "samples_per_s" not in r:
                lines.append(f"{key:<12} {name:<{w}} {r.get('error') or r.get('skipped')}")
                continue
            mfu = f"{100 * r['mfu_real']:.1f}%" if r.get("mfu_real") is not None else "-"
            mem = (f"{r['peak_memory_gb']:.1f}/{r['peak_reserved_gb']:.1f}" if r.get("peak_memory_gb") is not None
                   else "-")
            lines.append(f"{key:<12} {name:<{w}} {r['samples_per_s']:>10.0f} {r['real_tokens_per_s']:>11.0f} "
                         f"{mfu:>9} {mem:>13} {r['step_ms']:>8.1f} {r['setup_s']:>8.1f}  {r.get('attention') or '-'}")
        if "ratio" in entry:
            lines.append(f"{key:<12} {'stilts / trainer':<{w}} {entry['ratio']:>10.2f}x  (best: "
                         f"{entry['stilts']['variant']})")
    for key, entry in report["shapes"].items():
        lines += [format_profile(f"profile {key} {name}", r["profile"])
                  for name, r in entry["variants"].items() if "profile" in r]
    for name, t in report.get("targets", {}).items():
        detail = next(t[k] for k in ("value", "ratios", "variants") if k in t)
        lines.append(f"target {name}: {'met' if t['met'] else 'NOT met'} ({detail})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
