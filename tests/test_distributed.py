"""Data parallelism: 2 CPU processes (gloo, launched by torchrun as on a GPU node) reach the same metrics as
1 process at the same global batch, replicated (DDP) or sharded (FSDP). Dropout is off so the runs compute
the same function; the gradient average over the two half batches equals the 1-process gradient of the
whole batch."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, SMOKE, run_cli, sigterm_in_training_forward
from stilts_xling import checkpoint
from stilts_xling.results import read_rows

OVER = ["model.dropout=0", "xtreme.languages={xnli: [en, de]}", "intermediate.train.max_steps=60",
        "xtreme.train.max_steps=40"]
FSDP = "distributed.strategy=fsdp"

# Run the CLI with rank 0 alone sending itself SIGTERM in its STOP_AT-th training forward pass (no kill from
# outside, so the step is exact): the other rank must checkpoint and stop at the same step.
STOP_RANK0 = """
import os, signal
from stilts_xling.tasks.classification import ClassificationFamily
real, calls = ClassificationFamily.forward, []
def forward(self, head, hidden, pooled, batch):
    if head.training and os.environ["RANK"] == "0":
        calls.append(1)
        if len(calls) == int(os.environ["STOP_AT"]):
            signal.raise_signal(signal.SIGTERM)
    return real(self, head, hidden, pooled, batch)
ClassificationFamily.forward = forward
from stilts_xling.cli import app
app()
"""


def _metrics(run_dir):
    rows = read_rows(run_dir / "results.jsonl")
    return {(r["phase"], r["task"], r["language"], r["split"], r["metric"]): r["value"] for r in rows}, len(rows)


def _torchrun(*args, env=None, python=None):
    """`stilts ARGS` in 2 processes; with `python`, that code runs the CLI in each process instead."""
    command = ["--no-python", sys.executable, "-c", python] if python else ["-m", "stilts_xling.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *command,
                           *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _assert_same_metrics(run_dir, reference):
    metrics, rows = _metrics(run_dir)
    assert rows == reference[1]  # rank 0 alone writes results
    assert metrics.keys() == reference[0].keys()
    for key, value in reference[0].items():  # relative: perplexities run to thousands
        assert abs(metrics[key] - value) < 1e-6 * max(1.0, abs(value)), key


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one") / "run"
    assert run_cli("run", SMOKE, f"run_dir={run_dir}", *OVER).exit_code == 0
    return _metrics(run_dir)


def test_two_processes_match_one_process(tmp_path, one_process):
    out = _torchrun("run", SMOKE, f"run_dir={tmp_path / 'two'}", *OVER)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _assert_same_metrics(tmp_path / "two", one_process)
    assert out.stdout.count("intermediate mnli") == 1  # rank 0 alone reports


def test_fsdp_two_processes_match_one_process(tmp_path, one_process):
    out = _torchrun("run", SMOKE, f"run_dir={tmp_path / 'two'}", *OVER, FSDP)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "FSDP: 2 transformer blocks and the rest of the model sharded across 2 processes" in out.stderr
    _assert_same_metrics(tmp_path / "two", one_process)
    # The encoder was gathered from the shards into an ordinary save_pretrained directory.
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(tmp_path / "two" / "intermediate" / "encoder")
    assert all(type(p) is torch.nn.Parameter for p in encoder.parameters())


def _layout(state: dict) -> dict:
    """What a checkpoint holds, without the values: keys, shapes and dtypes, optimizer groups, schedule."""
    def shapes(tensors):
        return {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}

    return {"keys": sorted(state), "step": state["step"], "model": shapes(state["model"]),
            "best_state": shapes(state["best_state"]), "scheduler": state["scheduler"],
            "optimizer": {i: shapes(s) for i, s in state["optimizer"]["state"].items()},
            "param_groups": state["optimizer"]["param_groups"], "rng": sorted(state["rng"])}


def test_fsdp_checkpoint_is_a_full_one_that_a_single_process_resumes(tmp_path, cli, monkeypatch, one_process):
    run_dir = tmp_path / "fsdp"
    out = _torchrun("run", SMOKE, f"run_dir={run_dir}", *OVER, FSDP, env={"STOP_AT": "30"}, python=STOP_RANK0)
    assert out.returncode != 0
    assert "after step 30;" in out.stderr and "stopped by signal on another rank after step 30;" in out.stderr
    sharded = checkpoint.load(run_dir / "intermediate" / "checkpoint.pt")

    # The same step in one process: the layout must be identical and the values the same up to rounding.
    sigterm_in_training_forward(monkeypatch, 30)
    assert cli("train-intermediate", SMOKE, f"run_dir={tmp_path / 'one'}", *OVER, FSDP).exit_code == 3
    monkeypatch.undo()
    whole = checkpoint.load(tmp_path / "one" / "intermediate" / "checkpoint.pt")
    assert _layout(sharded) == _layout(whole)
    for key, value in whole["model"].items():
        assert torch.allclose(sharded["model"][key], value, atol=1e-4), key

    # One process (strategy fsdp: nothing to shard) finishes the run from the FSDP checkpoint.
    result = cli("run", SMOKE, f"run_dir={run_dir}", *OVER, FSDP)
    assert result.exit_code == 0, result.output
    _assert_same_metrics(run_dir, one_process)


@pytest.fixture
def one_rank_group():
    """A gloo process group of this process alone, removed afterwards (other tests expect none)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fsdp_in_one_process_is_plain_training_and_its_states_round_trip(one_rank_group):
    """With one rank FSDP computes exactly what the plain loop does: accumulation (2 micro batches),
    clipping, AdamW; the best-state snapshot is a copy; gathered states load back into fresh shards."""
    from stilts_xling import parallel
    from stilts_xling.config import ModelConfig, TrainConfig, merge_train
    from stilts_xling.data import collate
    from stilts_xling.model import MultiTaskModel, load_encoder, load_tokenizer, set_dropout, tokenizer_source
    from stilts_xling.speed import MicroBatch
    from stilts_xling.tasks.registry import get_task
    from stilts_xling.train import _linear_schedule, _optimizer, train_step

    cfg = ModelConfig(name="tiny:xlm-roberta")
    tok = load_tokenizer(tokenizer_source(cfg))
    cpu, hp = torch.device("cpu"), merge_train(TrainConfig(lr=1e-2, max_grad_norm=0.5))

    def build(sharded: bool):
        torch.manual_seed(0)
        model = set_dropout(MultiTaskModel(load_encoder(cfg.name, cfg, tok), [get_task("mnli")]), 0.0)
        par = parallel.Sharded(model, cpu, False) if sharded else None
        optimizer = _optimizer(model, hp, fused=False)
        return model, par, optimizer, _linear_schedule(optimizer, 0, 10)

    gen = torch.Generator().manual_seed(1)
    features = [{"input_ids": torch.randint(5, 200, (int(n),), generator=gen).tolist(), "labels": i % 3}
                for i, n in enumerate(torch.randint(3, 20, (8,), generator=gen))]
    micro = [MicroBatch(collate(part, tok.pad_token_id), len(part), 0, 0, 0) for part in (features[:4], features[4:])]

    def step(model, optimizer, scheduler):
        train_step(model, "mnli", micro, optimizer, scheduler, None, hp.max_grad_norm, cpu, False)

    plain, _, plain_opt, plain_sched = build(sharded=False)
    model, par, optimizer, scheduler = build(sharded=True)
    step(plain, plain_opt, plain_sched)
    step(model, optimizer, scheduler)
    snapshot, after_one = par.snapshot(model), {k: v.clone() for k, v in plain.state_dict().items()}
    for _ in range(2):
        step(plain, plain_opt, plain_sched)
        step(model, optimizer, scheduler)
    for key, value in plain.state_dict().items():
        assert torch.equal(par.model_state(model)[key], value), key
        assert torch.equal(snapshot[key], after_one[key]), key  # not aliased to the live parameters
    state = par.optimizer_state(model, optimizer)
    assert state["param_groups"] == plain_opt.state_dict()["param_groups"]
    for index, values in plain_opt.state_dict()["state"].items():
        assert all(torch.equal(state["state"][index][k], v) for k, v in values.items()), index

    fresh, fresh_par, fresh_opt, fresh_sched = build(sharded=True)
    fresh_par.load_model_state(fresh, par.model_state(model))
    fresh_par.load_optimizer_state(fresh, fresh_opt, state)
    fresh_sched.load_state_dict(scheduler.state_dict())
    step(fresh, fresh_opt, fresh_sched)
    step(plain, plain_opt, plain_sched)
    for key, value in plain.state_dict().items():
        assert torch.equal(fresh_par.model_state(fresh)[key], value), key


def test_launcher_selects_fsdp_and_deepspeed_is_refused(monkeypatch):
    from stilts_xling.config import load_config
    from stilts_xling.rundir import _launched_with_fsdp, _use_fsdp

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert _launched_with_fsdp() and "ACCELERATE_USE_FSDP" not in os.environ  # kept from accelerate/transformers
    ddp = load_config(SMOKE, ["distributed.strategy=ddp"])
    with pytest.raises(ValueError, match="--use_fsdp, but distributed.strategy is ddp"):
        _use_fsdp(ddp, launched_fsdp=True)
    compiled = load_config(SMOKE, ["speed.compile=true"])  # strategy auto: the config check cannot know
    with pytest.raises(ValueError, match="speed.compile: cannot be combined with FSDP"):
        _use_fsdp(compiled, launched_fsdp=True)
    assert not _use_fsdp(load_config(SMOKE), launched_fsdp=True)  # one process, no process group
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="DeepSpeed is not supported"):
        _launched_with_fsdp()


def test_layer_stacks_of_every_architecture():
    from stilts_xling.config import ModelConfig
    from stilts_xling.model import TINY_ARCHITECTURES, load_encoder, load_tokenizer, tokenizer_source
    from stilts_xling.parallel import layer_stacks

    expected = {"xlm-roberta": ["encoder.layer"], "bert": ["encoder.layer"], "deberta-v2": ["encoder.layer"],
                "rembert": ["encoder.layer"], "gpt2": ["h"], "llama": ["layers"], "t5": ["encoder.block"],
                "t5/decoder": ["encoder.block", "decoder.block"]}
    for name, stacks in expected.items():
        arch, _, side = name.partition("/")
        cfg = ModelConfig(name=f"tiny:{arch}", seq2seq_side=side or "encoder")
        encoder = load_encoder(cfg.name, cfg, load_tokenizer(tokenizer_source(cfg)))
        names = {id(module): path for path, module in encoder.named_modules()}
        assert [names[id(stack)] for stack in layer_stacks(encoder)] == stacks, name
    assert set(TINY_ARCHITECTURES) == {name.split("/")[0] for name in expected}


@pytest.mark.parametrize("optimizer", [[], ["speed.flat_adamw=true"]], ids=["adamw", "flat-adamw"])
def test_ddp_multitask_with_accumulation_matches_one_process(tmp_path, optimizer):
    """MNLI + MLM: each step trains one head, so DDP must tolerate the other head's unused parameters; 4
    micro batches per step average their gradients across processes only after the last; and MLM's loss,
    a mean over masked tokens that the two processes hold in different numbers, is normalized by the
    step's global token count, so 2 processes compute what 1 does. FlatAdamW under DDP too: DDP copies the
    averaged gradients into its buffer's views, and the unused head is skipped on both ranks alike."""
    config = REPO / "configs" / "smoke" / "mlm.yaml"
    over = ["model.dropout=0", "intermediate.train.max_steps=10", "intermediate.train.micro_batch_size=2",
            *optimizer]
    assert run_cli("train-intermediate", config, f"run_dir={tmp_path / 'one'}", *over).exit_code == 0
    out = _torchrun("train-intermediate", config, f"run_dir={tmp_path / 'two'}", *over)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    one = _metrics(tmp_path / "one")
    assert {key[1] for key in one[0]} == {"mnli", "mlm"}
    _assert_same_metrics(tmp_path / "two", one)


def test_ddp_with_lazy_embedding_rows_matches_one_process(tmp_path):
    """Each rank looks up its own rows, but DDP averages the gradients: the claims are shared before the step,
    and a row another rank claimed catches up inside the step, so both ranks move the same rows."""
    over = ["model.dropout=0", "intermediate.train.max_steps=6", "speed.flat_adamw=true",
            "speed.lazy_embedding=true"]
    assert run_cli("train-intermediate", SMOKE, f"run_dir={tmp_path / 'one'}", *over).exit_code == 0
    out = _torchrun("train-intermediate", SMOKE, f"run_dir={tmp_path / 'two'}", *over)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _assert_same_metrics(tmp_path / "two", _metrics(tmp_path / "one"))


def test_token_budget_with_several_processes_is_refused(tmp_path):
    out = _torchrun("train-intermediate", SMOKE, f"run_dir={tmp_path / 'two'}", *OVER, "speed.token_budget=256")
    assert out.returncode != 0
    assert "speed.token_budget cannot be used with several processes" in out.stdout + out.stderr
