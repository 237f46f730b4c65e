"""One flat training loop. Single-task training is multi-task training with one task.

Each optimizer step samples a task (sampling.py), accumulates `batch_size / micro_batch_size` micro
batches of that task, clips, steps AdamW and the linear schedule. Every `eval_every` steps the model is
scored on a dev subset of every task; the best state (mean of the tasks' selection metrics) is kept and
restored at the end (jiant's load_best_model), with early stopping after `patience` evaluations.
The speed options (speed.py: unpadded rows, token budgets, CUDA graphs, compile, collation threads)
change how batches are built and run, not what a step computes.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from . import checkpoint, parallel
from .config import SamplerConfig, TrainConfig
from .data import feature_length, length_grouped_batches, loss_terms, sequence_lengths
from .evaluate import autocast, evaluate
from .flat_adamw import FlatAdamW
from .sampling import task_probabilities, total_steps
from .speed import MicroBatch, SpeedConfig, SpeedPlan, loss_weights, prefetch, prepare
from .tasks.base import TaskSpec
from .tasks.registry import family_of
from .tracking import flatten_metrics

log = logging.getLogger(__name__)


@dataclass
class TaskData:
    spec: TaskSpec
    hp: TrainConfig  # resolved: batch_size, micro_batch_size, epochs, max_length for this task
    train: list[dict]  # features
    dev_examples: list[dict] = field(default_factory=list)
    dev_features: list[dict] = field(default_factory=list)


@dataclass
class TrainResult:
    best_step: int
    best_score: float
    dev_metrics: dict[str, dict[str, float]]  # task -> metrics at the best step
    history: list[dict]


class TrainingStopped(RuntimeError):
    """Training ended early on purpose (a signal) or by necessity (a non-finite loss); the message says
    where the last good checkpoint is and how to go on."""


class _Signals:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the end of the current step and stops."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "_Signals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a test runner's worker): keep the defaults
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _first_bad(step_losses: list[tuple[int, torch.Tensor]]) -> Optional[int]:
    """The first step whose loss is NaN/inf, with one host sync for all the steps given."""
    if not step_losses:
        return None
    values = torch.stack([loss.float() for _, loss in step_losses]).cpu()
    bad = (~torch.isfinite(values)).nonzero()
    return step_losses[int(bad[0])][0] if len(bad) else None


class _Stream:
    """Endless, reshuffled-per-epoch micro batches of one task's features."""

    def __init__(self, features: list[dict], micro: int, seed: int):
        self.features, self.micro, self.seed, self.epoch = features, micro, seed, 0
        self.lengths = [feature_length(f) for f in features]
        self.queue: list[list[int]] = []

    def next(self) -> list[dict]:
        if not self.queue:
            self.queue = length_grouped_batches(self.lengths, self.micro, shuffle=True, seed=self.seed + self.epoch)
            self.epoch += 1
        return [self.features[i] for i in self.queue.pop()]


def _dev_subset(task: TaskData, size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A fixed random subset of dev examples (and their features) for model selection."""
    if not size or len(task.dev_examples) <= size:
        return task.dev_examples, task.dev_features
    keep = set(random.Random(seed).sample(range(len(task.dev_examples)), size))
    examples = [ex for i, ex in enumerate(task.dev_examples) if i in keep]
    remap = {old: new for new, old in enumerate(sorted(keep))}
    features = [{**f, "example_index": remap[f["example_index"]]} for f in task.dev_features
                if f["example_index"] in keep]
    return examples, features


def _diverged(step: int, path: Optional[Path]) -> str:
    where = f"the last good checkpoint is {path}" if path and path.exists() else "no checkpoint was written yet"
    return (f"the training loss became NaN/inf at step {step}; stopped there, {where}. Lower the learning "
            "rate or check the data, then rerun (delete the checkpoint to start the phase afresh)")


def _optimizer(model: torch.nn.Module, hp: TrainConfig, fused: bool, flat: bool = False,
               lazy: bool = False) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA); `flat`: FlatAdamW, the same maths over flat buffers (speed.flat_adamw), with
    `lazy` its word-embedding rows updated when looked up (speed.lazy_embedding)."""
    # No weight decay on biases and LayerNorm weights (jiant / BERT convention): those are the 1-D tensors.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if flat:
        optimizer = FlatAdamW(groups, lr=hp.lr, eps=1e-8)
        if lazy:
            optimizer.defer_rows(model, model.encoder.get_input_embeddings())
        return optimizer
    return torch.optim.AdamW(groups, lr=hp.lr, eps=1e-8, fused=fused)


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's wrapper (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def up_to_date(optimizer: Any) -> None:
    """FlatAdamW's deferred embedding rows (speed.lazy_embedding) brought up to date: before anything reads
    the parameters whole (evaluation snapshots, checkpoints)."""
    flush = getattr(_inner(optimizer), "flush", None)
    if flush is not None:
        flush()


def _linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int):
    # transformers' get_linear_schedule_with_warmup, which jiant and the Trainer use: with warmup the
    # first step runs at lr 0, and the peak comes at step `warmup`.
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def rows_per_feature(features: list[dict]) -> int:
    """Encoder rows per feature: 1, or the number of choices (multiple choice)."""
    ids = features[0]["input_ids"] if features else []
    return len(ids) if ids and isinstance(ids[0], list) else 1


def shard(features: list[dict], rank: int, world: int) -> list[dict]:
    """This process's share of a micro batch under data parallelism: features[rank::world], topped up by
    wrapping around when the batch does not divide evenly, so every rank steps in lockstep (DDP needs it)."""
    if world == 1:
        return features
    return [features[(rank + i * world) % len(features)] for i in range(-(-len(features) // world))]


def largest_micro_batches(plan: SpeedPlan, schedule: list[str], probes: dict[str, _Stream], accum: dict[str, int],
                          max_rows: dict[str, int]) -> dict[int, int]:
    """{max rows: the most real tokens in one micro batch} over the whole run, drawn from `probes`, fresh
    copies of the training streams (index and length work only, no collation): SpeedPlan.reserve's input."""
    largest: dict[int, int] = {}
    for task in schedule:
        for _ in range(accum[task]):
            for part in plan.micro_batches(probes[task].next()):
                tokens = sum(n for f in part for n in sequence_lengths(f))
                largest[max_rows[task]] = max(largest.get(max_rows[task], 0), tokens)
    return largest


def step_batches(plan: SpeedPlan, schedule: list[str], streams: dict[str, _Stream], accum: dict[str, int],
                 max_rows: dict[str, int], workers: int = 0, rank: int = 0, world: int = 1):
    """(task, micro batches) for each optimizer step of `schedule`, collated `workers` threads ahead.

    The streams are advanced here, in the caller's thread and in step order; only collation runs ahead.
    Every rank draws the same global micro batches and keeps its shard; DDP averages the gradients. So
    that the step's loss is the mean over all its loss terms (labelled tokens for MLM and tagging) on
    every rank and under accumulation alike, each rank normalizes by its share of the global count, which
    every rank knows without communicating: the global batches are the same everywhere."""
    def jobs():
        for task in schedule:
            drawn = [streams[task].next() for _ in range(accum[task])]
            terms = sum(loss_terms(f) for feats in drawn for f in feats) / world
            features = [shard(feats, rank, world) for feats in drawn]
            yield lambda task=task, features=features, terms=terms: (
                task, plan.step_batches(features, max_rows[task], terms))

    return prefetch(jobs(), workers)


def clip_in_step(optimizer: torch.optim.Optimizer, max_norm: float) -> bool:
    """Clip inside the fused AdamW kernel: it divides every gradient by `optimizer.grad_scale` (the hook
    GradScaler uses) as it reads it, so clipping costs one read of the gradients (their norm) instead of
    three (norm, then an in-place multiply). Same maths as clip_grad_norm_: grads * min(1, max_norm /
    (norm + 1e-6)). Only for a fused optimizer over plain tensors (sharded DTensor gradients would need a
    global norm); returns False, clipping nothing, otherwise. FlatAdamW takes the norm over its flat
    gradient buffer in one reduction."""
    if isinstance(optimizer, FlatAdamW):
        norm = optimizer.grad_norm()
    elif not optimizer.defaults.get("fused"):
        return False
    else:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or any(type(g) is not torch.Tensor for g in grads):
            return False
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    optimizer.grad_scale = ((norm + 1e-6) / max_norm).clamp(min=1.0)  # stays on the device: no host sync
    return True


def train_step(model: Any, task: str, micro_batches: list[MicroBatch], optimizer: Any, scheduler: Any,
               accelerator: Any, max_grad_norm: Optional[float], device: torch.device, bf16: bool,
               keep_grads: Optional[list[torch.Tensor]] = None) -> list[torch.Tensor]:
    """One optimizer step on one task's micro batches; returns their unscaled losses, left on the device
    (no host sync). `accelerator` None means plain `backward` and `clip_grad_norm_` (benchmarks, and FSDP:
    torch's clip_grad_norm_ takes the norm over every rank's gradient shards). `keep_grads`: parameters
    whose `.grad` tensors must survive zero_grad (SpeedPlan.keep_grads: CUDA graphs write into them)."""
    losses = []
    # Gradients are averaged across processes once per step, after its last micro batch: FSDP2 modules
    # reduce-scatter only then, DDP skips its all-reduce inside no_sync.
    sync = getattr(model, "set_requires_gradient_sync", None)
    no_sync = getattr(model, "no_sync", None)
    for i, (micro, weight) in enumerate(zip(micro_batches, loss_weights(micro_batches))):
        last = i == len(micro_batches) - 1
        if sync is not None:
            sync(last)
        batch = {k: v.to(device, non_blocking=True) for k, v in micro.batch.items()}
        with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
            with autocast(device, bf16):
                loss, _ = model(task, batch)
            scaled = loss * weight
            if accelerator is not None:
                accelerator.backward(scaled)
            else:
                scaled.backward()
        losses.append(loss.detach())
    inner = _inner(optimizer)
    if max_grad_norm and not clip_in_step(inner, max_grad_norm):
        clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
        clip(model.parameters(), max_grad_norm)
    optimizer.step()
    inner.grad_scale = None
    scheduler.step()
    zero_grad(inner, keep_grads)
    return losses


def zero_grad(optimizer: torch.optim.Optimizer, keep: Optional[list[torch.Tensor]]) -> None:
    """Gradients to None, as torch's default, except those of `keep`, zeroed in place. None matters: AdamW
    skips a parameter whose `.grad` is None in the next step (the head of a task that is not in it), where
    a zero gradient would still decay its weights and moments."""
    if not keep or isinstance(optimizer, FlatAdamW):  # FlatAdamW: .grad stays its buffer's view
        optimizer.zero_grad(set_to_none=True)
        return
    kept = {id(p) for p in keep}
    torch._foreach_zero_([p.grad for p in keep if p.grad is not None])
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in kept:
                p.grad = None


def train(model: Any, tasks: list[TaskData], hp: TrainConfig, sampler: SamplerConfig, accelerator: Any,
          pad_id: int, seed: int, bf16: bool = True, desc: str = "train",
          on_eval: Optional[Any] = None, speed: Optional[SpeedConfig] = None, tracker: Optional[Any] = None,
          checkpoint_path: Optional[Path] = None, fsdp: bool = False) -> TrainResult:
    """Train; with `checkpoint_path`, resume from it when it exists and write it every
    `hp.checkpoint_every` steps (0: at each evaluation) and at the end. A resumed run replays the same
    data order and RNG states, so on CPU it ends bit-identical to an uninterrupted one. `fsdp`: shard the
    model across the processes (parallel.py) instead of replicating it."""
    device = accelerator.device
    names = [t.spec.name for t in tasks]
    by_name = {t.spec.name: t for t in tasks}
    sizes = {t.spec.name: len(t.train) for t in tasks}
    steps = total_steps(sizes, {n: by_name[n].hp.epochs for n in names},
                        {n: by_name[n].hp.batch_size for n in names}, sampler, hp.max_steps)
    probs = task_probabilities(sizes, sampler)
    micro = {n: by_name[n].hp.micro_batch_size or by_name[n].hp.batch_size for n in names}
    accum = {n: max(1, by_name[n].hp.batch_size // micro[n]) for n in names}

    def new_streams() -> dict[str, _Stream]:
        return {n: _Stream(by_name[n].train, micro[n], seed + i) for i, n in enumerate(names)}

    streams = new_streams()
    dev = {n: _dev_subset(by_name[n], hp.eval_subset, seed) for n in names}
    eval_every = hp.eval_every or math.ceil(steps / max(1.0, max(by_name[n].hp.epochs for n in names)))

    speed = speed or SpeedConfig()
    max_seqlen = max(feature_length(f) for t in tasks for f in t.train) if speed.unpadded else 0
    if fsdp:  # the speed plan's start-up check runs the whole encoder, so it comes before sharding
        plan = prepare(model.to(device), speed, device, bf16, pad_id, max_seqlen)
    par = parallel.Sharded(model, device, bf16) if fsdp else parallel.Replicated(accelerator)
    model = par.prepare(model)
    # FSDP: over the parameter shards. FlatAdamW moves the parameters into its buffers: after accelerate
    # has placed them, before CUDA graphs and torch.compile (the speed plan) record their addresses.
    optimizer = _optimizer(accelerator.unwrap_model(model) if not fsdp else model, hp, fused=device.type == "cuda",
                           flat=speed.flat_adamw and not fsdp, lazy=speed.lazy_embedding and not fsdp)
    scheduler = _linear_schedule(optimizer, int(hp.warmup * steps), steps)
    optimizer = par.prepare(optimizer)
    if not fsdp:
        plan = prepare(accelerator.unwrap_model(model), speed, device, bf16, pad_id, max_seqlen)
    if plan.unpadded:
        log.info("speed.unpadded: packed rows, attention by %s", plan.attention)
    max_rows = {n: micro[n] * rows_per_feature(by_name[n].train) for n in names}
    rng = random.Random(seed)
    # Drawn up front so that batches can be collated ahead; the same draws as one per step.
    schedule = [rng.choices(names, weights=[probs[n] for n in names])[0] for _ in range(steps)]
    if plan.graphs is not None:
        # Fresh copies of the streams: the same draws, walked ahead without touching the real ones.
        plan.reserve(largest_micro_batches(plan, schedule, new_streams(), accum, max_rows))
    best = TrainResult(best_step=-1, best_score=-math.inf, dev_metrics={}, history=[])
    best_state, bad_evals, start = None, 0, 0
    state = checkpoint.load(checkpoint_path) if checkpoint_path else None
    if state is not None:
        if state["steps"] != steps or state["schedule"] != schedule:
            raise checkpoint.CheckpointError(
                f"the checkpoint {checkpoint_path} belongs to a different training setup ({state['steps']} steps, "
                f"now {steps}); delete it to start this phase afresh")
        start, bad_evals, best_state, best = state["step"], state["bad_evals"], state["best_state"], state["best"]
        par.load_model_state(model, state["model"])
        par.load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        for task in schedule[:start]:  # replay the data order up to the checkpoint (index work only)
            for _ in range(accum[task]):
                streams[task].next()
        log.info("resuming from %s at step %d of %d", checkpoint_path, start, steps)
        state = None  # loaded into the model and optimizer: free the host copy (every rank read the file)
    batches = step_batches(plan, schedule[start:], streams, accum, max_rows, speed.workers,
                           accelerator.process_index, accelerator.num_processes)
    loss_sums = {n: torch.zeros((), device=device) for n in names}
    loss_counts = {n: 0 for n in names}
    unchecked: list[tuple[int, torch.Tensor]] = []  # per-step losses not yet checked for NaN/inf
    seen_examples, seen_tokens, started = 0, 0, time.perf_counter()

    def save_checkpoint(step: int) -> None:
        bad = _first_bad(unchecked)  # never save a diverged state
        if bad is not None:
            raise TrainingStopped(_diverged(bad, checkpoint_path))
        unchecked.clear()
        if checkpoint_path is None:
            return
        up_to_date(optimizer)
        # FSDP gathers the states on every rank (a collective); rank 0 alone receives and writes them.
        model_state, optimizer_state = par.model_state(model), par.optimizer_state(model, optimizer)
        if not accelerator.is_main_process:
            return
        checkpoint.save(checkpoint_path, {
            "step": step, "steps": steps, "schedule": schedule, "bad_evals": bad_evals, "best": best,
            "best_state": best_state, "model": model_state, "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(), "rng": checkpoint.rng_state()})

    model.train()
    bar = tqdm(range(start + 1, steps + 1), initial=start, total=steps, desc=desc,
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    with _Signals() as signals:
        for step, (task, micro_batches) in zip(bar, batches):
            # FSDP: plain backward and torch's clipping (accelerate's looks for a model it prepared).
            step_losses = train_step(model, task, micro_batches, optimizer, scheduler, None if fsdp else accelerator,
                                     hp.max_grad_norm, device, bf16, plan.keep_grads)
            # The step's mean loss, left on the device (no host sync per step).
            weights = loss_weights(micro_batches)
            loss_sums[task] += sum(loss * w for loss, w in zip(step_losses, weights)) / max(sum(weights), 1e-12)
            loss_counts[task] += 1
            seen_examples += sum(m.examples for m in micro_batches)
            seen_tokens += sum(m.tokens for m in micro_batches)
            unchecked.append((step, torch.stack(step_losses).sum()))

            if step % 20 == 0 or step == steps:  # one host sync per 20 steps for the progress bar
                bad = _first_bad(unchecked)
                if bad is not None:
                    raise TrainingStopped(_diverged(bad, checkpoint_path))
                unchecked.clear()
                elapsed = time.perf_counter() - started
                losses = {n: (loss_sums[n] / loss_counts[n]).item() for n in names if loss_counts[n]}
                bar.set_postfix(loss=f"{sum(losses.values()) / max(1, len(losses)):.4f}",
                                ex_s=f"{seen_examples / elapsed:.0f}", tok_s=f"{seen_tokens / elapsed:.0f}")
                best.history.append({"step": step, "lr": scheduler.get_last_lr()[0],
                                     **{f"loss/{n}": v for n, v in losses.items()}})
                if tracker is not None:
                    tracker.log({"lr": scheduler.get_last_lr()[0], "throughput/examples_per_s": seen_examples / elapsed,
                                 "throughput/tokens_per_s": seen_tokens / elapsed,
                                 **{f"loss/{n}": v for n, v in losses.items()}}, step)
                loss_sums = {n: torch.zeros((), device=device) for n in names}
                loss_counts = {n: 0 for n in names}

            if step % eval_every == 0 or step == steps:
                up_to_date(optimizer)  # the snapshot below reads every row
                metrics = {}
                with plan.evaluation():
                    for n in names:
                        examples, features = dev[n]
                        if examples:
                            metrics[n], _ = evaluate(model, by_name[n].spec, examples, features, "en",
                                                     micro[n] * 2, device, pad_id, bf16)
                # Auxiliary tasks (continued MLM) train along but do not choose the checkpoint, as in
                # Pruksachatkun et al. 2020's MLM runs, which stopped early on the task alone.
                chosen = [n for n in metrics if not getattr(family_of(by_name[n].spec), "auxiliary", False)]
                scores = [metrics[n][by_name[n].spec.metric] for n in chosen or metrics]
                score = sum(scores) / len(scores) if scores else float(step)  # no dev data: the last state wins
                best.history.append({"step": step, "dev_score": score, **{f"dev/{n}": m for n, m in metrics.items()}})
                if on_eval:
                    on_eval(step, metrics)
                if tracker is not None:
                    tracker.log({"dev/score": score, **flatten_metrics(metrics)}, step)
                log.info("step %d: dev %s", step, {n: m[by_name[n].spec.metric] for n, m in metrics.items()})
                if score > best.best_score:
                    best.best_step, best.best_score, best.dev_metrics = step, score, metrics
                    best_state = par.snapshot(model)  # FSDP: rank 0 holds it, the other ranks {}
                    bad_evals = 0
                else:
                    bad_evals += 1
                    if hp.patience and bad_evals >= hp.patience:
                        log.info("early stopping at step %d: no dev improvement in %d evaluations", step, bad_evals)
                        save_checkpoint(steps)  # a rerun resumes at the end: nothing left to train
                        break
            every = hp.checkpoint_every or eval_every
            stop = par.any_rank(signals.received)  # FSDP: every rank checkpoints and stops at the same step
            if step % every == 0 or step == steps or stop:
                save_checkpoint(step)
            if stop:
                bar.close()
                raise TrainingStopped(f"stopped by signal {signals.received or 'on another rank'} after step {step}; "
                                      f"the checkpoint {checkpoint_path} holds it: rerun the same command to resume")
    bar.close()
    batches.close()
    plan.close()
    if isinstance(inner := _inner(optimizer), FlatAdamW):
        inner.release()  # the saved encoder needs tensors of its own, not views of one buffer
    if best_state is not None:
        par.load_model_state(model, best_state, from_rank0=True)
    return best
