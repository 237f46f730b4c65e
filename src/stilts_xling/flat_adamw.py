"""AdamW over flat buffers (`speed.flat_adamw`): one kernel pass per contiguous run of parameters.

torch's fused AdamW walks XLM-R Large's ~390 tensors in ~34 multi-tensor launches, then the loop spends two
more passes on the gradients: `_foreach_norm` for clipping and `_foreach_zero_`. Here the parameters, their
gradients and both moments are views into four flat fp32 buffers (each tensor starting 256-byte aligned), so
- the clipping norm is one reduction over the gradient buffer,
- the update is one Triton kernel per run of parameters (on CUDA), which also zeroes the gradients it has
  read, so `zero_grad` has nothing left to do; elsewhere, or without Triton, torch's `_fused_adamw_` on the
  same runs plus one `zero_()` each.
The maths is torch's AdamW (decoupled weight decay, bias-corrected moments, eps added after the square root)
with clipping applied as the fused kernel's `grad_scale`, and the state dict has AdamW's layout, so a
checkpoint moves between this optimizer and torch.optim.AdamW in either direction.

Skipped parameters are torch's too. With `zero_grad(set_to_none=True)` torch leaves out a parameter whose
`.grad` stayed None (the head of a task that was not in the step), and keeps its step count. Here `.grad` is
always a view, so "got a gradient this step" is read from the view's version counter: autograd's in-place
accumulation, DDP's copy and a CUDA-graph replay (packing._Replay bumps it) all advance it; the kernel's own
zeroing does not count. A `.grad` replaced by another tensor is copied into the buffer and counts.
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Iterable, Optional

import torch

if TYPE_CHECKING:
    from .lazy_rows import LazyRows

log = logging.getLogger(__name__)

ALIGN = 64  # elements: each tensor starts 256 bytes into its buffer, as vectorized loads and cuBLAS like
BLOCK = 2048  # elements per Triton program: 4 streams x 8 KB in flight, enough to keep HBM busy


def constants(group: dict) -> tuple[float, float, float, float]:
    """beta1, beta2, eps and weight decay of a parameter group as plain floats: a YAML `weight_decay: 0` is
    an int, which Triton would compile a variant for."""
    beta1, beta2 = map(float, group["betas"])
    return beta1, beta2, float(group["eps"]), float(group["weight_decay"])


def bias_corrections(lr: float, beta1: float, beta2: float, step: int) -> tuple[float, float]:
    """The Triton kernels' step_size = lr / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t)."""
    return lr / (1 - beta1 ** step), math.sqrt(1 - beta2 ** step)


def torch_adamw(p, g, m, v, step: int, lr: float, group: dict, grad_scale: Optional[torch.Tensor]) -> None:
    """One step of torch's own fused AdamW kernel over (p, g, m, v) in place: the path without Triton."""
    beta1, beta2, eps, decay = constants(group)
    steps = [torch.full((), float(step), device=p.device)]  # a fill, not a blocking host-to-device copy
    torch._fused_adamw_([p], [g], [m], [v], [], steps, lr=lr, beta1=beta1, beta2=beta2, weight_decay=decay,
                        eps=eps, amsgrad=False, maximize=False, grad_scale=grad_scale)


def _triton_kernels():
    """adamw_kernels (the Triton kernels), or None where Triton is missing. Imported on first use, so that
    importing this module never needs Triton, and TRITON_INTERPRET set by a test before the first call applies."""
    global _KERNELS
    if _KERNELS is False:
        try:
            from . import adamw_kernels
            _KERNELS = adamw_kernels
        except ImportError:
            _KERNELS = None
    return _KERNELS


_KERNELS = False  # not imported yet


class FlatAdamW(torch.optim.Optimizer):
    """torch.optim.AdamW's maths and state dict over flat buffers; see the module docstring. All
    parameters must share one dtype and device. `kernel`: "triton", "torch", or "auto" (Triton on CUDA
    when it imports)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, kernel: str = "auto"):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.params = [p for group in self.param_groups for p in group["params"]]
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("FlatAdamW: a parameter appears twice in the parameter groups")
        kinds = {(p.dtype, p.device) for p in self.params}
        if len(kinds) != 1:
            raise ValueError(f"FlatAdamW needs every parameter in one dtype on one device, got {sorted(map(str, kinds))}; "
                             "use speed.flat_adamw: false for this model")
        (dtype, device), = kinds
        self.ranges, total = [], 0
        for p in self.params:
            start = -(-total // ALIGN) * ALIGN
            self.ranges.append((start, start + p.numel()))
            total = start + p.numel()
        # The parameters move first and the memory they leave is handed back before the other three buffers
        # exist, so that building this costs no more peak (reserved) memory than training will.
        self.flat = {"param": torch.zeros(total, dtype=dtype, device=device)}
        old_grads = [p.grad for p in self.params]
        for p, (a, b) in zip(self.params, self.ranges):
            view = self.flat["param"][a:b].view_as(p)
            view.copy_(p.detach())
            p.data = view  # the module's Parameter object stays; only its storage moves into the buffer
            p.grad = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        self.flat.update({name: torch.zeros(total, dtype=dtype, device=device)
                          for name in ("grad", "exp_avg", "exp_avg_sq")})
        for p, (a, b), old in zip(self.params, self.ranges, old_grads):
            p.grad = _alias(self.flat["grad"], a, p)
            if old is not None:
                p.grad.copy_(old)
            self.state[p] = {"step": torch.tensor(0.0), "exp_avg": self.flat["exp_avg"][a:b].view_as(p),
                             "exp_avg_sq": self.flat["exp_avg_sq"][a:b].view_as(p)}
        del old_grads
        self.grads = [p.grad for p in self.params]
        self.steps = [0] * len(self.params)
        self.group_of = [i for i, group in enumerate(self.param_groups) for _ in group["params"]]
        self._mark_read()
        use_triton = kernel == "triton" or (kernel == "auto" and device.type == "cuda")
        self.kernels = _triton_kernels() if use_triton else None
        self.kernel = self.kernels.adamw if self.kernels is not None else None
        if kernel == "triton" and self.kernel is None:
            raise RuntimeError("FlatAdamW(kernel='triton') needs Triton: pip install triton")
        self.lazy: Optional[LazyRows] = None  # defer_rows
        self.grad_scale: Optional[torch.Tensor] = None  # set by train.clip_in_step for one step
        self._collect_pending: Optional[list[bool]] = None  # grad_norm's _collect, for the step after it
        log.info("FlatAdamW: %d tensors, %.1fM elements, %s kernel", len(self.params), total / 1e6,
                 "Triton" if self.kernel is not None else "torch")

    def defer_rows(self, model: torch.nn.Module, embedding: torch.nn.Embedding) -> None:
        """speed.lazy_embedding: `embedding`'s rows are updated when looked up (lazy_rows.py), not every step.
        Refused when another module of `model` shares the matrix: its gradient would reach every row."""
        from .lazy_rows import LazyRows, tied_users

        users = tied_users(model, embedding)
        if users:
            raise ValueError(f"speed.lazy_embedding: the word embeddings are also used by {', '.join(users)} (tied "
                             "output embeddings, as in an MLM head), whose gradient reaches every row; set "
                             "speed.lazy_embedding: false for this run")
        index = next((i for i, p in enumerate(self.params) if p is embedding.weight), None)
        if index is None or embedding.weight.dim() != 2:
            raise ValueError("speed.lazy_embedding: the embedding's weight is not a matrix this optimizer trains")
        self.lazy = LazyRows(self, index, embedding)

    def flush(self) -> None:
        """Deferred embedding rows up to date: call before reading the parameters whole."""
        if self.lazy is not None:
            self.lazy.flush()

    def add_param_group(self, param_group: dict) -> None:
        if hasattr(self, "flat"):  # called by Optimizer.__init__ for the groups given; the buffers are fixed then
            raise RuntimeError("FlatAdamW lays out its buffers once: pass every parameter group to the "
                               "constructor")
        super().add_param_group(param_group)

    # Gradients ------------------------------------------------------------------------------------------

    def _mark_read(self) -> None:
        """Every gradient as it is now counts as read: only later writes make a parameter active."""
        self.versions = [g._version for g in self.grads]

    def _collect(self) -> list[bool]:
        """Which parameters got a gradient since the last step; a `.grad` that is not the buffer's view is
        copied into it (and the view put back)."""
        active = []
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                p.grad = self.grads[i]  # zero already: the step zeroed it after reading
                active.append(False)
            elif g is not self.grads[i]:
                self.grads[i].copy_(g)
                p.grad = self.grads[i]
                active.append(True)
            else:
                active.append(g._version != self.versions[i])
        return active

    def grad_norm(self) -> torch.Tensor:
        """The 2-norm over every gradient, as clip_grad_norm_ takes it, in one reduction (parameters
        without a gradient this step hold zeros). With deferred rows, their part comes from the claimed rows
        only, once the first step has checked that the others get no gradient (it reads everything)."""
        self._collect_pending = self._collect()
        grad = self.flat["grad"]
        if self.lazy is None or not self.lazy.checked:
            return torch.linalg.vector_norm(grad)
        a, b = self.ranges[self.lazy.index]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(grad[:a]), torch.linalg.vector_norm(grad[b:]),
                                                     self.lazy.claimed_norm()]))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The step already zeroed what it read. Gradients written since (a step that was skipped, or a
        backward before the first step) are zeroed here; `.grad` stays the buffer's view either way."""
        for i, active in enumerate(self._collect()):
            if active:
                self.grads[i].zero_()
        self._mark_read()

    # The update -----------------------------------------------------------------------------------------

    def _runs(self, active: list[bool]) -> list[tuple[int, int, int]]:
        """(first, last + 1, group) index runs of active parameters that are next to each other in the
        buffer, in the same group and at the same step count: each run is one kernel launch."""
        runs: list[list[int]] = []
        for i, on in enumerate(active):
            if not on or (self.lazy is not None and i == self.lazy.index):  # stepped row by row
                continue
            if runs and runs[-1][1] == i and self.group_of[i] == runs[-1][2] and self.steps[i] == self.steps[i - 1]:
                runs[-1][1] = i + 1
            else:
                runs.append([i, i + 1, self.group_of[i]])
        return [tuple(r) for r in runs]

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        active = self._collect_pending if self._collect_pending is not None else self._collect()
        self._collect_pending = None
        for i, on in enumerate(active):
            self.steps[i] += on
        for first, end, g in self._runs(active):
            group = self.param_groups[g]
            a, b = self.ranges[first][0], self.ranges[end - 1][1]
            self._update(a, b, group, self.steps[first])
        if self.lazy is not None and active[self.lazy.index]:
            self.lazy.step()
        self._mark_read()
        return loss

    def _update(self, a: int, b: int, group: dict, step: int) -> None:
        lr = float(group["lr"])
        p, g, m, v = (self.flat[k][a:b] for k in ("param", "grad", "exp_avg", "exp_avg_sq"))
        if self.kernel is not None:
            n = b - a
            scale = self.grad_scale
            beta1, beta2, eps, decay = constants(group)
            self.kernel[(triton_cdiv(n, BLOCK),)](
                p, g, m, v, scale if scale is not None else g, n, lr, beta1, beta2, eps, decay,
                *bias_corrections(lr, beta1, beta2, step), HAS_SCALE=scale is not None, BLOCK=BLOCK)
            return
        torch_adamw(p, g, m, v, step, lr, group, self.grad_scale)
        g.zero_()

    # State ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        self.flush()  # deferred rows included: the state is dense AdamW's
        for p, step in zip(self.params, self.steps):
            self.state[p]["step"] = torch.tensor(float(step))
        state = super().state_dict()
        # torch.optim.AdamW has no state for a parameter it never stepped: nor has this one's dict.
        state["state"] = {k: v for k, v in state["state"].items() if float(v["step"]) > 0}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # hyper-parameters, and state tensors on the parameters' device
        for i, p in enumerate(self.params):
            loaded = self.state.get(p, {})
            a, b = self.ranges[i]
            views = {k: self.flat[k][a:b].view_as(p) for k in ("exp_avg", "exp_avg_sq")}
            for k, view in views.items():
                view.copy_(loaded[k]) if k in loaded else view.zero_()
            self.steps[i] = int(float(loaded.get("step", 0)))
            self.state[p] = {"step": torch.tensor(float(self.steps[i])), **views}
        if self.lazy is not None:
            self.lazy.reset()

    def release(self) -> None:
        """Give every parameter its own storage back (the saved encoder must not share one buffer: safetensors
        refuses shared tensors) and drop the buffers; the optimizer is done after this."""
        if self.lazy is not None:
            self.lazy.close()
            self.lazy = None
        for p in self.params:
            p.data = p.data.clone()
            p.grad = None
        self.flat.clear()
        self.state.clear()


def _alias(buffer: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """`like`-shaped memory of `buffer` at `offset` that autograd does not see as a view: it gets a version
    counter of its own (views share their base's), which is how the step tells which gradients were written."""
    return torch.empty(0, dtype=buffer.dtype, device=buffer.device).set_(
        buffer.untyped_storage(), buffer.storage_offset() + offset, like.shape, like.stride())


def triton_cdiv(n: int, block: int) -> int:
    return -(-n // block)
