"""FlatAdamW (speed.flat_adamw) computes what torch.optim.AdamW computes, skips what it skips and shares
its checkpoint format. The Triton kernel runs here under Triton's CPU interpreter when Triton is installed,
and on CUDA in the gpu-marked test."""
import copy
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, no_dropout, run_cli, sigterm_in_training_forward
from stilts_xling.flat_adamw import ALIGN, FlatAdamW
from stilts_xling.train import clip_in_step, zero_grad

HAS_TRITON = importlib.util.find_spec("triton") is not None


def _model(device="cpu"):
    torch.manual_seed(0)
    heads = {"enc": torch.nn.Linear(7, 5), "a": torch.nn.Linear(5, 3), "b": torch.nn.Linear(5, 2)}
    return torch.nn.ModuleDict(heads).to(device)


def _groups(model):
    # As train._optimizer: weight decay on matrices only.
    return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


def _step(model, optimizer, head, scale, x, max_norm=1.0):
    """One train_step's optimizer part: backward through one head, clip inside the step, step, zero."""
    (model[head](model["enc"](x)).pow(2).sum() * scale).backward()
    if not clip_in_step(optimizer, max_norm):
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    optimizer.grad_scale = None
    for group in optimizer.param_groups:
        group["lr"] *= 0.7  # a schedule: the step must read the groups' lr each time
    zero_grad(optimizer, None)


def compare_with_torch(kernel: str, device: str = "cpu") -> None:
    """Steps alternate between two heads, so each head is skipped in some steps (its own step count, no
    decay meanwhile); gradients are large enough that clipping bites in some steps and not in others."""
    reference, flat = _model(device), _model(device)
    torch_opt = torch.optim.AdamW(_groups(reference), lr=1e-2, eps=1e-8, foreach=False)
    flat_opt = FlatAdamW(_groups(flat), lr=1e-2, eps=1e-8, kernel=kernel)
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(1)).to(device)
    for i, head in enumerate("baab" "aab"):
        scale = 10.0 ** (i % 3 - 1)  # 0.1, 1, 10
        _step(reference, torch_opt, head, scale, x)
        _step(flat, flat_opt, head, scale, x)
        for (name, a), b in zip(reference.named_parameters(), flat.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"step {i}: {name}")
    steps = {k: float(v["step"]) for k, v in flat_opt.state_dict()["state"].items()}
    assert steps == {k: float(v["step"]) for k, v in torch_opt.state_dict()["state"].items()}
    assert sorted(steps.values()) == [3, 3, 4, 4, 7, 7]  # head b: 3 steps, head a: 4, the encoder: all 7
    assert all(float(p.grad.abs().sum()) == 0 for p in flat.parameters())  # the step zeroed what it read


def test_flat_adamw_matches_torch_adamw_with_torch_kernels():
    compare_with_torch("torch")


def in_triton_interpreter(code: str) -> None:
    """Run `code` (with this folder importable) in a fresh process under Triton's CPU interpreter:
    TRITON_INTERPRET must be set before the kernels are built."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_flat_adamw_triton_kernel_matches_torch_adamw_in_the_interpreter():
    in_triton_interpreter("import test_flat_adamw as t; t.compare_with_torch('triton')")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_flat_adamw_matches_torch_adamw_on_cuda(kernel):
    if kernel == "triton" and not HAS_TRITON:
        pytest.skip("Triton is not installed")
    compare_with_torch(kernel, "cuda")


def test_layout_state_dict_round_trips_and_release():
    model = _model()
    flat = FlatAdamW(_groups(model), lr=1e-2)
    storage = flat.flat["param"].untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == storage for p in model.parameters())
    assert all((p.data_ptr() - storage) % (4 * ALIGN) == 0 for p in model.parameters())  # 256-byte steps
    x = torch.randn(4, 7)
    for head in "ab":
        _step(model, flat, head, 1.0, x)

    # FlatAdamW -> torch AdamW -> FlatAdamW: the same trajectory as staying with FlatAdamW.
    twin = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(flat.state_dict(), buffer)
    torch_opt = torch.optim.AdamW(_groups(twin), lr=1e-2, foreach=False)
    torch_opt.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    for head in "aab":
        _step(model, flat, head, 3.0, x)
        _step(twin, torch_opt, head, 3.0, x)
    third = copy.deepcopy(twin)
    back = FlatAdamW(_groups(third), lr=1e-2)
    back.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    for head in "ba":
        for m, opt in ((model, flat), (twin, torch_opt), (third, back)):
            _step(m, opt, head, 3.0, x)
    for a, b, c in zip(model.parameters(), twin.parameters(), third.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-6)

    flat.release()  # each parameter gets storage of its own back, with its values
    values = [p.detach().clone() for p in model.parameters()]
    assert len({p.untyped_storage().data_ptr() for p in model.parameters()}) == len(values)
    assert all(torch.equal(a, p) and p.grad is None for a, p in zip(values, model.parameters()))


def test_gradients_written_outside_a_step_and_replaced_gradients():
    model = _model()
    opt = FlatAdamW(_groups(model), lr=1e-2)
    x = torch.randn(4, 7)
    model["a"](model["enc"](x)).sum().backward()
    opt.zero_grad()  # a backward that no step consumed: zeroed, and the next step does not count it
    assert all(float(p.grad.abs().sum()) == 0 for p in model.parameters())
    weight = model["b"].weight
    replaced = torch.ones_like(weight)
    weight.grad = replaced  # someone assigns a new .grad: it is copied into the buffer and counts
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert weight.grad is not replaced and weight.grad.data_ptr() != replaced.data_ptr()
    moved = [name for (name, p), b in zip(model.named_parameters(), before) if not torch.equal(p, b)]
    assert moved == ["b.weight"]
    assert opt.state_dict()["state"].keys() == {next(i for i, p in enumerate(opt.params) if p is weight)}


def test_mixed_dtypes_and_late_parameter_groups_are_refused():
    model = _model()
    model["b"].to(torch.float64)
    with pytest.raises(ValueError, match="speed.flat_adamw: false"):
        FlatAdamW(_groups(model), lr=1e-2)
    opt = FlatAdamW(_model().parameters(), lr=1e-2)
    with pytest.raises(RuntimeError, match="pass every parameter group to the constructor"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))]})


def _intermediate_metrics(run_dir):
    from stilts_xling.results import read_rows

    return {(r["task"], r["language"], r["metric"]): r["value"] for r in read_rows(run_dir / "results.jsonl")}


def test_multitask_training_with_flat_adamw_matches_torch_adamw_and_resumes(tmp_path, cli, monkeypatch):
    """MNLI + MLM through the CLI: each step trains one head, so FlatAdamW must skip the other head as
    torch's AdamW does; the encoder saved at the end is written from parameters of their own. A run stopped
    by SIGTERM resumes from its checkpoint (per-parameter step counts included) to the same metrics."""
    config = REPO / "configs" / "smoke" / "mlm.yaml"
    # One evaluation, at the end, so that the metrics are of the last state (not an earlier best).
    over = ["model.dropout=0", "intermediate.train.max_steps=12", "intermediate.train.checkpoint_every=2",
            "intermediate.train.eval_every=12"]
    results = {}
    for name, extra in (("torch", []), ("flat", ["speed.flat_adamw=true"])):
        run_dir = tmp_path / name
        assert run_cli("train-intermediate", config, f"run_dir={run_dir}", *over, *extra).exit_code == 0
        results[name] = _intermediate_metrics(run_dir)
        assert (run_dir / "intermediate" / "encoder" / "model.safetensors").exists()
    assert {key[0] for key in results["torch"]} == {"mnli", "mlm"}
    assert results["flat"].keys() == results["torch"].keys()
    for key, value in results["torch"].items():
        assert results["flat"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    from stilts_xling import checkpoint

    run_dir = tmp_path / "stopped"
    sigterm_in_training_forward(monkeypatch, 4)
    assert cli("train-intermediate", config, f"run_dir={run_dir}", *over, "speed.flat_adamw=true").exit_code == 3
    monkeypatch.undo()
    saved = checkpoint.load(run_dir / "intermediate" / "checkpoint.pt")
    steps = {float(s["step"]) for s in saved["optimizer"]["state"].values()}
    assert len(steps) > 1 and max(steps) == saved["step"]  # the heads' counts differ from the encoder's
    assert cli("train-intermediate", config, f"run_dir={run_dir}", *over, "speed.flat_adamw=true").exit_code == 0
    resumed = _intermediate_metrics(run_dir)
    assert resumed.keys() == results["flat"].keys()
    for key, value in results["flat"].items():
        assert resumed[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fused_wgrad,lazy", [(False, False), (True, False), (True, True)],
                         ids=["autograd-wgrad", "fused-wgrad", "fused-wgrad-lazy-rows"])
def test_cuda_graph_steps_with_flat_adamw_match_eager_steps_with_torch_adamw(fused_wgrad, lazy):
    """train.train_step over micro batches of two buckets: CUDA graphs + FlatAdamW (Triton when installed),
    with or without fused weight gradients and deferred embedding rows (their catch-up captured in the
    graphs), move the weights as eager packed steps + torch's fused AdamW do (dropout off, bf16 tolerance)."""
    from test_unpadded import PAD, _features, _model
    from stilts_xling.config import TrainConfig, merge_train
    from stilts_xling.speed import MicroBatch, SpeedConfig, prepare
    from stilts_xling.train import _linear_schedule, _optimizer, train_step

    parts = [_features(8, seed=10), _features(8, seed=20, lo=30, hi=60)]

    def weights(fast):
        model, task = _model("classification")
        model = no_dropout(model.cuda().train())
        opt = _optimizer(model, merge_train(TrainConfig(lr=1e-4)), fused=True, flat=fast, lazy=fast and lazy)
        sched = _linear_schedule(opt, 0, 10)
        plan = prepare(model, SpeedConfig(unpadded=True, cuda_graphs=fast, fused_wgrad=fast and fused_wgrad),
                       torch.device("cuda"), True, PAD, 64)
        assert (plan.graphs is not None) == fast
        for _ in range(3):
            micro = []
            for part in parts:
                batch, real, computed = plan.collate(part, 8)
                micro.append(MicroBatch(batch, 8, real, real, computed, 0.5))
            train_step(model, task, micro, opt, sched, None, 1.0, torch.device("cuda"), True, plan.keep_grads)
        plan.close()
        if fast:
            opt.flush()
        return {n: p.detach().float().cpu() for n, p in model.named_parameters()}

    eager, fast = weights(False), weights(True)
    init = {n: p.detach().float() for n, p in _model("classification")[0].named_parameters()}
    for name, value in eager.items():
        # Means, not maxima: Adam's update of a near-zero gradient is ~lr * its sign, which bf16 rounding flips.
        moved = (value - init[name]).abs().mean().item()
        assert moved > 0, name
        assert (fast[name] - value).abs().mean().item() <= 0.05 * moved, name


def test_zero_grad_keeps_graph_gradients_in_place_and_drops_the_rest():
    """Under CUDA graphs the encoder's .grad tensors must stay the captured ones (zeroed in place), while
    the heads' go to None, so that torch's AdamW skips the head of a task that is not in the next step."""
    model = _model()
    opt = torch.optim.AdamW(_groups(model), lr=1e-2)
    keep = list(model["enc"].parameters())
    x = torch.randn(4, 7)
    model["a"](model["enc"](x)).sum().backward()
    kept = [p.grad for p in keep]
    zero_grad(opt, keep)
    assert all(p.grad is g and float(g.abs().sum()) == 0 for p, g in zip(keep, kept))
    assert all(p.grad is None for name in "ab" for p in model[name].parameters())
    head_a = [p.detach().clone() for p in model["a"].parameters()]
    model["b"](model["enc"](x)).sum().backward()
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(head_a, model["a"].parameters()))  # skipped, not decayed
