"""`stilts bench` on CPU: a tiny model, every shape, the documented JSON; no timing claims."""
import json

import pytest

from stilts_xling import bench

RUN_KEYS = {"samples_per_s", "real_tokens_per_s", "computed_tokens_per_s", "mfu_real", "peak_memory_gb",
            "peak_reserved_gb", "step_ms", "setup_s", "loss", "real_tokens_per_step"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "cpu.json"
    result = bench.run_bench(shapes=("mnli", "squad", "hellaswag"), steps=2, warmup=1, batch_size=4, device="cpu",
                             tiny=True, out_json=out, tokens_per_step=512)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return result


def test_report_has_the_documented_keys_with_positive_numbers(report):
    assert {"device", "torch", "transformers", "model", "matmul_params", "peak_flops", "peak_flops_source",
            "mfu_formula", "batch_size", "steps", "warmup", "lr", "shapes", "targets"} <= set(report)
    assert report["device"] == "cpu" and report["peak_flops"] is None and report["matmul_params"] > 0
    assert set(report["shapes"]) == {"mnli", "mnli@512", "squad", "hellaswag"}  # mnli@512: tokens_per_step=512
    for name in ("mnli", "squad", "hellaswag"):
        entry = report["shapes"][name]
        assert set(entry["variants"]) == set(bench.CPU_VARIANTS)
        for run in [entry["trainer"], entry["stilts"], *entry["variants"].values()]:
            assert "error" not in run, run
            assert RUN_KEYS <= set(run)
            assert run["samples_per_s"] > 0 and run["real_tokens_per_s"] > 0 and run["step_ms"] > 0
            assert run["computed_tokens_per_s"] >= run["real_tokens_per_s"] * 0.999
            assert run["mfu_real"] is None and run["peak_memory_gb"] is None  # CPU: no peak FLOPs, no CUDA memory
        assert entry["ratio"] > 0 and entry["stilts"]["variant"] in bench.CPU_VARIANTS
    # The Trainer pads MNLI to 128 and SQuAD to 384 (run_glue / run_qa): it computes more than it reads.
    assert report["shapes"]["mnli"]["trainer"]["computed_tokens_per_s"] > 2 * report["shapes"]["mnli"]["trainer"][
        "real_tokens_per_s"]
    variants = report["shapes"]["mnli"]["variants"]
    assert variants["unpadded"]["unpadded"] is True
    assert variants["unpadded"]["attention"] == "padded SDPA per sequence"  # the varlen kernels are CUDA-only
    assert variants["padded"]["attention"] is None
    assert variants["unpadded"]["optimizer"] == "AdamW"  # not fused on the CPU
    assert variants["unpadded+flat"]["optimizer"] == "FlatAdamW (torch kernels)"  # Triton only on CUDA
    assert variants["unpadded+flat+lazy"]["optimizer"] == "FlatAdamW (torch kernels), lazy embedding rows"
    # Deferred rows change when a row moves, not where: the runs' losses agree.
    assert variants["unpadded+flat+lazy"]["loss"] == pytest.approx(variants["unpadded+flat"]["loss"], rel=1e-4)


def test_the_table_prints_every_run(report):
    table = bench.format_table(report)
    runs = [line.split()[:2] for line in table.splitlines()[2:]]
    assert [shape for shape, run in runs if run == "trainer"] == ["mnli", "squad", "hellaswag"]
    assert "stilts / trainer" in table


def test_synthetic_shapes_look_like_the_tasks():
    vocab = 250002
    mnli = bench.synthetic_features(bench.SHAPES["mnli"], 4000, vocab)
    lengths = [len(f["input_ids"]) for f in mnli]
    assert 43 <= sum(lengths) / len(lengths) <= 49 and max(lengths) <= 128
    assert all(1 not in f["input_ids"] for f in mnli)  # never the pad id
    squad = bench.synthetic_features(bench.SHAPES["squad"], 500, vocab)
    assert max(len(f["input_ids"]) for f in squad) <= 384
    assert all(0 < f["start_positions"] <= f["end_positions"] < len(f["input_ids"]) for f in squad)
    swag = bench.synthetic_features(bench.SHAPES["hellaswag"], 500, vocab)
    assert all(len(f["input_ids"]) == 4 and f["labels"] in range(4) for f in swag)
    mean = sum(len(r) for f in swag for r in f["input_ids"]) / 2000
    assert 70 <= mean <= 100


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown variant"):
        bench.run_bench(variants=["turbo"], device="cpu")


def test_peak_flops_table():
    assert [k for k, _ in bench.PEAK_BF16_FLOPS].index("H100 PCIe") < [k for k, _ in bench.PEAK_BF16_FLOPS].index("H100")


def test_stand_in_heads_when_a_task_is_missing_from_the_registry(monkeypatch):
    import torch

    from stilts_xling import bench_data
    from stilts_xling.data import collate

    monkeypatch.setattr(bench_data, "_REAL_TASKS", {"classification": "mnli", "span": "no_such", "choice": "no_such"})
    for name, family in (("squad", "bench_span"), ("hellaswag", "bench_choice")):
        spec = bench._spec(bench.SHAPES[name])
        assert spec.family == family
        from stilts_xling.model import MultiTaskModel
        from transformers import AutoModel

        model = MultiTaskModel(AutoModel.from_config(bench._config(tiny=True), add_pooling_layer=False), [spec])
        loss, _ = model(spec.name, collate(bench.synthetic_features(bench.SHAPES[name], 4, 1000), 1))
        loss.backward()
        assert torch.isfinite(loss)


def test_profile_reports_where_a_step_goes(tmp_path):
    report = bench.run_bench(shapes=("mnli",), steps=1, warmup=1, batch_size=4, device="cpu", tiny=True,
                             tokens_per_step=None, trainer=False, variants=["padded"], profile=2)
    prof = report["shapes"]["mnli"]["variants"]["padded"]["profile"]
    assert prof["steps"] == 2 and prof["wall_ms_per_step"] > 0 and prof["busy_ms_per_step"] > 0
    assert prof["top"] and all(r["ms_per_step"] > 0 and r["category"] for r in prof["top"])
    # CPU operators: the encoder's matmuls show up under their aten names
    assert any(r["category"] == "matmul" for r in prof["top"]), prof["top"]
    assert abs(sum(prof["categories"].values()) - prof["busy_ms_per_step"]) < 1e-6 * max(1, prof["busy_ms_per_step"])
    assert "profile mnli padded: wall" in bench.format_table(report)
    # optimizer and matmul kernels land in their categories by name
    from stilts_xling.profiling import category
    assert category("void at::native::_fused_adamw_kernel") == "optimizer"
    assert category("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
    assert category("flash_fwd_kernel") == "attention"
    assert category("triton_per_fused_add_native_layer_norm_0") == "layernorm"


def test_targets_judge_the_fastest_variant_and_look_for_one_that_is_fast_and_lean():
    def run(samples, reserved, tokens=1500, mfu=None):
        return {"samples_per_s": samples, "peak_reserved_gb": reserved, "real_tokens_per_step": tokens, "mfu_real": mfu}

    mnli = {"trainer": run(100, 12.0),
            "variants": {"fast": run(600, 13.0), "lean": run(520, 11.5), "slow": run(400, 10.0),
                         "broken": {"error": "RuntimeError: boom"}}}
    big = {"variants": {"fast": run(3000, 90.0, tokens=16500, mfu=0.41), "lean": run(2500, 60.0, tokens=16500, mfu=0.35)}}
    report = {"shapes": {"mnli": mnli, "mnli@16k": big}}
    for entry in report["shapes"].values():
        bench._summarize(entry)
    targets = bench._targets(report)
    assert mnli["stilts"]["variant"] == "fast" and targets["mnli_b32_ratio_ge_5"] == {"value": 6.0, "met": True}
    assert targets["mfu_real_ge_0.40_at_16k_tokens"] == {"shape": "mnli@16k", "value": 0.41, "met": True}
    # The fastest variant holds more than the Trainer (13 / 12 GB); "lean" is 5.2x within 11.5 GB.
    assert targets["peak_memory_le_trainer"] == {"ratios": {"mnli": 13.0 / 12.0}, "met": False}
    assert targets["mnli_b32_5x_within_trainer_memory"] == {"variants": ["lean"], "met": True}
    mnli["variants"]["lean"]["peak_reserved_gb"] = 12.5
    assert bench._targets(report)["mnli_b32_5x_within_trainer_memory"] == {"variants": [], "met": False}
