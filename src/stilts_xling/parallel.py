"""How the training loop's processes share the model: replicated (one process, or DDP through accelerate)
or sharded (FSDP, PyTorch's FSDP2 `fully_shard`; `distributed.strategy: fsdp`).

Both keep the loop's data parallelism: every process draws the same global micro batches and trains on its
share (train.shard), gradients are averaged across processes, and every process evaluates the same dev
examples. Under FSDP each transformer block is one unit and the rest (embeddings, final norm, task heads)
the root unit: the MLM head shares the input embeddings, and parameters shared across units are not
supported. A forward pass all-gathers each unit in turn, so every rank must run the same forwards and state
gathers in the same order; the loop's evaluations, checkpoints and stop decisions are taken on all ranks
alike for that reason.

Checkpoints and the saved encoder hold ordinary full state dicts on the CPU, in the layout a single process
writes (the optimizer's state keyed by parameter index), so a run resumes under any world size or strategy.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class Replicated:
    """One process or DDP: every rank holds the whole model, so states are the modules' own; rank 0
    alone saves them."""

    def __init__(self, accelerator: Any):
        self.accelerator = accelerator

    def prepare(self, obj: Any) -> Any:
        """The model (DDP-wrapped under several processes), then the optimizer built over its parameters
        (accelerate may move the model's parameters, so the optimizer comes second: FlatAdamW holds views)."""
        return self.accelerator.prepare(obj)

    def model_state(self, model: Any) -> dict:
        """The live state dict, for a checkpoint written at once."""
        return self.accelerator.unwrap_model(model).state_dict()

    def snapshot(self, model: Any) -> dict:
        """A CPU copy of the state dict that later steps do not change (the best state)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model_state(model).items()}

    def optimizer_state(self, model: Any, optimizer: Any) -> dict:
        return optimizer.state_dict()

    def load_model_state(self, model: Any, state: dict, from_rank0: bool = False) -> None:
        self.accelerator.unwrap_model(model).load_state_dict(state)

    def load_optimizer_state(self, model: Any, optimizer: Any, state: dict) -> None:
        optimizer.load_state_dict(state)

    def any_rank(self, flag: Any) -> bool:
        return bool(flag)


class Sharded:
    """FSDP2. State gathers are collectives: every rank calls them, rank 0 alone receives the full (CPU)
    state dict and the others an empty one."""

    def __init__(self, model: nn.Module, device: torch.device, bf16: bool):
        import torch.distributed as dist

        shard(model, device, bf16)
        self.device = device
        # Stop flags are agreed on the CPU every step: with NCCL that needs a gloo group of its own, and
        # costs no GPU sync.
        self.flags = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    def prepare(self, obj: Any) -> Any:
        return obj  # the model was sharded in __init__, and the optimizer is built over the shards

    def model_state(self, model: nn.Module) -> dict:
        return full_model_state(model)

    def snapshot(self, model: nn.Module) -> dict:
        state = full_model_state(model)
        if self.device.type == "cpu":  # there the gather can hand back the live tensors (one process): copy
            state = {k: v.clone() for k, v in state.items()}
        return state

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state = get_optimizer_state_dict(model, optimizer, options=_full_options())
        return _by_index(state) if state else state

    def load_model_state(self, model: nn.Module, state: dict, from_rank0: bool = False) -> None:
        """Load a full state dict into the shards; `from_rank0`: only rank 0 holds it (a snapshot)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True,
                                                                    broadcast_from_rank0=from_rank0))

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, _by_name(model, optimizer, state),
                                 options=StateDictOptions(full_state_dict=True))

    def any_rank(self, flag: Any) -> bool:
        """Whether `flag` is set on any rank. A signal reaches the ranks a step apart at times; a rank that
        checkpointed alone would gather states while the others all-gather layers, so all stop together."""
        import torch.distributed as dist

        value = torch.tensor([1 if flag else 0])
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.flags)
        return bool(value.item())


def layer_stacks(module: nn.Module) -> list[nn.ModuleList]:
    """The stacks of transformer blocks: the outermost ModuleLists of one block class (XLM-R/BERT/DeBERTa
    `encoder.layer`, GPT-2 `h`, Llama `layers`, T5 `block` on each side). Found by shape, not by name, so an
    unseen architecture shards too; lists inside a block (T5's sub-layers, experts) stay in their block."""
    stacks: dict[str, nn.ModuleList] = {}
    for name, child in module.named_modules():
        inside = any(name.startswith(outer + ".") for outer in stacks)
        if (isinstance(child, nn.ModuleList) and len(child) and not inside and len({type(m) for m in child}) == 1
                and any(True for _ in child.parameters())):
            stacks[name] = child
    return list(stacks.values())


def shard(model: nn.Module, device: torch.device, bf16: bool) -> None:
    """fully_shard each transformer block of `model.encoder`, then the whole model (the root unit keeps
    embeddings and heads). Parameters are gathered in fp32 and the loop's bf16 autocast decides compute
    dtypes, exactly as under DDP: FSDP's bf16 parameter policy would halve the all-gather traffic but also
    round layer-norm, bias and embedding weights and their gradients to bf16, so an FSDP run would no longer
    reproduce a DDP or single-GPU one (measured on an H200: 6e-3 apart after one step, different dev scores
    on the smoke model)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # Inputs are not cast: the loop's autocast decides compute dtypes, and float labels (regression) keep
    # their precision.
    policy = MixedPrecisionPolicy(cast_forward_inputs=False)
    model.to(device)
    # Each rank keeps its slice of its own copy: start every copy from rank 0's weights, as DDP does, so a
    # head initialised differently on some rank cannot leave a mixed model.
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)
    blocks = [block for stack in layer_stacks(model.encoder) for block in stack]
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    log.info("FSDP: %d transformer blocks and the rest of the model sharded across %d processes%s", len(blocks),
             dist.get_world_size(), " (fp32 parameters, bf16 autocast)" if bf16 and device.type == "cuda" else "")


def full_model_state(model: nn.Module) -> dict:
    """The whole model's state dict, gathered to rank 0 on the CPU (other ranks: {}). A collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _by_index(state: dict) -> dict:
    """A gathered optimizer state (keyed by parameter name) in `Optimizer.state_dict()`'s layout:
    parameters numbered in param-group order."""
    number: dict[str, int] = {}
    groups = [{**group, "params": [number.setdefault(name, len(number)) for name in group["params"]]}
              for group in state["param_groups"]]
    return {"state": {number[name]: value for name, value in state["state"].items()}, "param_groups": groups}


def _by_name(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """The inverse of _by_index for this optimizer: index -> the parameter's name, as
    get_optimizer_state_dict names it (named_parameters, a shared parameter under its first name)."""
    names = {param: name for name, param in model.named_parameters()}
    order = [names[param] for group in optimizer.param_groups for param in group["params"]]
    return {"state": {order[i]: value for i, value in state["state"].items()},
            "param_groups": [{**group, "params": [order[i] for i in group["params"]]}
                             for group in state["param_groups"]]}
