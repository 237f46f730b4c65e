"""Deferred word-embedding rows for FlatAdamW (`speed.lazy_embedding`): exact AdamW at a fraction of the
memory traffic.

XLM-R's word embeddings are 256M of its 560M parameters, but a batch of 32 MNLI pairs looks up ~1.5k of
their 250k rows, and only those rows get a gradient. AdamW still moves every row each step (weight decay,
moment decay), and that dense pass over the embedding is half the optimizer's time. A row whose gradient is
zero evolves by a fixed rule, though, given each step's lr and bias corrections: so a row is brought up to
date only when it is needed, by replaying the steps it missed with a zero gradient, in the same order and
arithmetic as the dense update.

- Before every lookup (a forward pre-hook on the embedding), the rows about to be read catch up to the
  current step, and are claimed for the next step.
- The step updates the claimed rows (their gradient, clipping included) and nothing else.
- `flush` brings every row up to date: before evaluation snapshots, checkpoints and the end of training,
  whatever reads the whole matrix. Checkpoints therefore look exactly like dense AdamW's.

Needs: the embedding's gradient is zero outside the rows looked up (checked once, at the first step): not
so when its matrix is tied to an output layer (an MLM head), which is refused up front. Several processes
(DDP) share their claims before the step, so every rank updates the same rows.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch

from .flat_adamw import bias_corrections, constants, torch_adamw

log = logging.getLogger(__name__)

CAPACITY = 1 << 20  # optimizer steps whose lr and bias corrections are kept (12 MB)
STEP_ROWS = 32  # rows per program of the step kernel: most programs find none of theirs claimed


def tied_users(model: torch.nn.Module, embedding: torch.nn.Embedding) -> list[str]:
    """Modules other than `embedding` that hold its weight (tied output embeddings)."""
    return [name or type(model).__name__ for name, module in model.named_modules()
            if module is not embedding and any(p is embedding.weight for p in module.parameters(recurse=False))]


class LazyRows:
    """The deferred rows of one [rows, width] parameter of a FlatAdamW (see the module docstring)."""

    def __init__(self, optimizer: Any, index: int, embedding: torch.nn.Embedding):
        self.opt, self.index = optimizer, index
        weight = optimizer.params[index]
        self.rows, self.width = weight.shape
        a, b = optimizer.ranges[index]
        self.p, self.g, self.m, self.v = (optimizer.flat[k][a:b].view(self.rows, self.width)
                                          for k in ("param", "grad", "exp_avg", "exp_avg_sq"))
        device = weight.device
        self.last = torch.zeros(self.rows, dtype=torch.int32, device=device)  # the step each row is at
        self.touched = torch.zeros(self.rows, dtype=torch.int32, device=device)  # claimed for the next step
        self.count = torch.zeros(1, dtype=torch.int32, device=device)  # the step count, for the kernels
        # Per step t: lr, lr / (1 - beta1^t), sqrt(1 - beta2^t) and the running sum of log(1 - lr * decay) since
        # the count was last reset; on the device for the kernels (which a CUDA graph may have captured, so it
        # never moves), on the host for the torch path.
        self.hist = torch.zeros(CAPACITY + 1, 4, dtype=torch.float32, device=device)
        self.lrs: dict[int, float] = {}
        self.log_decay: dict[int, float] = {}
        self.kernels = optimizer.kernels
        self.partial = torch.zeros(-(-self.rows // STEP_ROWS), dtype=torch.float32, device=device)  # claimed_norm's
        self.checked = False
        self.shared = False  # this step's claims are every rank's
        self.reset()
        self.hook = embedding.register_forward_pre_hook(self._before_lookup)

    @property
    def steps(self) -> int:
        return self.opt.steps[self.index]

    @property
    def group(self) -> dict:
        # Looked up each time: load_state_dict (and accelerate's wrapper) put new dicts in param_groups.
        return self.opt.param_groups[self.opt.group_of[self.index]]

    def reset(self) -> None:
        """Every row current at the optimizer's step count (a new optimizer, or a loaded state)."""
        self.last.fill_(self.steps)
        self.touched.zero_()
        self.count.fill_(self.steps)
        self.log_decay = {self.steps: 0.0}
        self.hist[self.steps, 3].fill_(0.0)

    def close(self) -> None:
        self.flush()
        self.hook.remove()

    # Catching up ----------------------------------------------------------------------------------------

    def _before_lookup(self, module: torch.nn.Module, args: tuple) -> None:
        self.catch_up(args[0], claim=True)

    @torch.no_grad()
    def catch_up(self, ids: torch.Tensor, claim: bool) -> None:
        """Bring these rows up to the current step; `claim`: the next step updates them (ids may repeat)."""
        ids = ids.reshape(-1)
        if ids.numel() == 0:
            return
        if self.kernels is not None:
            self.kernels.catch_up_rows[(ids.numel(),)](
                ids.contiguous(), self.p, self.m, self.v, self.last, self.touched, self.count, self.hist,
                self.width, *constants(self.group), MARK=claim, BLOCK=triton_block(self.width))
            return
        rows = torch.unique(ids)
        if claim:
            rows = rows[self.touched[rows] == 0]
            self.touched[rows] = 1
        self._replay(rows, self.steps)

    def flush(self) -> None:
        """Every row up to date (claims kept)."""
        if int(self.last.min()) < self.steps:
            self.catch_up(torch.arange(self.rows, device=self.last.device), claim=False)

    def _replay(self, rows: torch.Tensor, target: int) -> None:
        """torch path: the steps each of `rows` missed up to `target`, with a zero gradient; a row whose first
        moment is all zero jumps to `target` (adamw_kernels._missed_steps says why)."""
        rows = rows[self.last[rows] < target]
        if rows.numel() == 0:
            return
        beta2 = constants(self.group)[1]
        for step in range(int(self.last[rows].min()) + 1, target + 1):
            due = rows[self.last[rows] == step - 1]
            quiet = self.m[due].abs().amax(dim=1) == 0
            jump = due[quiet]
            self.p[jump] *= math.exp(self.log_decay[target] - self.log_decay[step - 1])
            self.v[jump] *= beta2 ** (target - step + 1)
            self.last[jump] = target
            moving = due[~quiet]
            self._update(moving, step, None)
            self.last[moving] = step
            if not moving.numel() and bool((self.last[rows] == target).all()):
                break

    def _update(self, rows: torch.Tensor, step: int, grad: Optional[torch.Tensor]) -> None:
        """torch path: one AdamW step of `rows` (torch's own fused kernel, as FlatAdamW's torch path)."""
        p, m, v = self.p[rows], self.m[rows], self.v[rows]
        g = grad if grad is not None else torch.zeros_like(p)
        torch_adamw(p, g, m, v, step, self.lrs[step], self.group, self.opt.grad_scale if grad is not None else None)
        self.p[rows], self.m[rows], self.v[rows] = p, m, v

    # The step -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self) -> None:
        """The claimed rows take this step (FlatAdamW.step calls it after counting the step)."""
        step = self.steps
        if step > CAPACITY:
            raise RuntimeError(f"speed.lazy_embedding keeps the lr of at most {CAPACITY} optimizer steps; this run "
                               "takes more: set speed.lazy_embedding: false")
        lr, consts = float(self.group["lr"]), constants(self.group)
        self.lrs[step] = lr
        self.log_decay[step] = self.log_decay[step - 1] + math.log1p(-lr * consts[3])
        # Fills, not a host-to-device copy: no sync with the GPU.
        for j, value in enumerate((lr, *bias_corrections(lr, consts[0], consts[1], step), self.log_decay[step])):
            self.hist[step, j].fill_(value)
        self.count.fill_(step)
        self._share_claims()
        self.shared = False  # the next step's claims start here
        if not self.checked:
            self._check_gradient()
        if self.kernels is not None:
            scale = self.opt.grad_scale
            self.kernels.step_rows[(-(-self.rows // STEP_ROWS),)](
                self.g, self.p, self.m, self.v, self.last, self.touched, self.count, self.hist,
                scale if scale is not None else self.g, self.rows, self.width, *consts, HAS_SCALE=scale is not None,
                ROWS=STEP_ROWS, BLOCK=triton_block(self.width))
            return
        rows = self.touched.nonzero().squeeze(1)
        self._replay(rows, step - 1)  # only after a claim made on another rank (DDP)
        self._update(rows, step, self.g[rows])
        self.g[rows] = 0
        self.last[rows] = step
        self.touched[rows] = 0

    def _share_claims(self) -> None:
        """DDP averaged the gradients: a row any rank looked up has one everywhere, so every rank claims it.
        Once per step (the clipping norm and the step both need it)."""
        if self.shared or not (torch.distributed.is_available() and torch.distributed.is_initialized()
                               and torch.distributed.get_world_size() > 1):
            return
        torch.distributed.all_reduce(self.touched, op=torch.distributed.ReduceOp.MAX)
        self.shared = True

    @torch.no_grad()
    def claimed_norm(self) -> torch.Tensor:
        """The 2-norm of the gradient over the claimed rows: all of it once the first step has checked that no
        other row gets one. The clipping norm then reads ~1.5k rows of XLM-R's 250k, not 1 GB."""
        self._share_claims()
        if self.kernels is not None:
            self.kernels.claimed_squares[(self.partial.numel(),)](
                self.g, self.touched, self.partial, self.rows, self.width, ROWS=STEP_ROWS,
                BLOCK=triton_block(self.width))
            return self.partial.sum().sqrt()
        return torch.linalg.vector_norm(self.g[self.touched.bool()])

    def _check_gradient(self) -> None:
        """Once (one host sync): the gradient is zero outside the claimed rows, or deferring would be wrong."""
        self.checked = True
        # Row maxima by a reduction (no copy of the 1 GB gradient of XLM-R Large's embedding).
        stray = int(torch.count_nonzero(torch.linalg.vector_norm(self.g, float("inf"), dim=1) * (self.touched == 0)))
        if stray:
            raise RuntimeError(f"speed.lazy_embedding: {stray} word-embedding rows got a gradient without being looked "
                               "up (is the matrix used elsewhere, e.g. tied to an output layer?); set "
                               "speed.lazy_embedding: false for this model")


def triton_block(width: int) -> int:
    return 1 << max(4, (width - 1).bit_length())
