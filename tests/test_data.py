"""Batching, collation, subsampling and multi-task sampling, with hand-computed expectations."""
import pytest

from stilts_xling.config import SamplerConfig, TaskOptions
from stilts_xling.data import collate, length_grouped_batches, subsample
from stilts_xling.sampling import task_probabilities, total_steps


def test_collate_pads_to_multiple_of_8_with_mask_and_labels():
    batch = collate([{"input_ids": [0, 5, 2], "labels": 1, "example_index": 0},
                     {"input_ids": [0, 5, 6, 7, 8, 9, 10, 11, 12, 2], "labels": 0, "example_index": 1}], pad_id=1)
    assert batch["input_ids"].shape == (2, 16)  # longest 10 -> 16
    assert batch["input_ids"][0].tolist()[:4] == [0, 5, 2, 1]
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 10]
    assert batch["labels"].tolist() == [1, 0]
    assert "example_index" not in batch


def test_collate_nested_choices_and_token_labels():
    batch = collate([{"input_ids": [[0, 2], [0, 3, 2]], "labels": 1},
                     {"input_ids": [[0, 4, 4, 2], [0, 2]], "labels": 0}], pad_id=1, multiple_of=1)
    assert batch["input_ids"].shape == (2, 2, 4)
    assert batch["attention_mask"][1].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    tags = collate([{"input_ids": [0, 7, 2], "labels": [-100, 3, -100]}, {"input_ids": [0, 2], "labels": [-100, -100]}],
                   pad_id=1, multiple_of=1)
    assert tags["labels"].tolist() == [[-100, 3, -100], [-100, -100, -100]]


def test_length_grouped_batches_cover_everything_once():
    lengths = [5, 50, 7, 48, 3, 49, 6, 51, 4]
    for shuffle in (False, True):
        batches = length_grouped_batches(lengths, 2, shuffle=shuffle, seed=3)
        assert sorted(i for b in batches for i in b) == list(range(9))
    # Unshuffled = sorted by length, so each batch holds neighbours in length.
    assert length_grouped_batches(lengths, 3, shuffle=False) == [[4, 8, 0], [6, 2, 3], [5, 1, 7]]
    # Shuffled batches are reproducible per seed and differ across seeds.
    assert length_grouped_batches(lengths, 2, True, 1) == length_grouped_batches(lengths, 2, True, 1)


def test_subsample_is_seeded_and_capped():
    examples = [{"id": str(i)} for i in range(100)]
    a = subsample(examples, TaskOptions(max_train_examples=10), seed=1)
    assert len(a) == 10 and a == subsample(examples, TaskOptions(max_train_examples=10), seed=1)
    assert a != subsample(examples, TaskOptions(max_train_examples=10), seed=2)
    assert len(subsample(examples, TaskOptions(train_fraction=0.25), seed=1)) == 25
    assert len(subsample(examples, TaskOptions(train_fraction=0.5, max_train_examples=20), seed=1)) == 20
    assert subsample(examples, None, seed=1) is examples


def test_sampler_probabilities_hand_computed():
    sizes = {"a": 900, "b": 100}
    assert task_probabilities(sizes, SamplerConfig(kind="proportional")) == pytest.approx({"a": 0.9, "b": 0.1})
    assert task_probabilities(sizes, SamplerConfig(kind="uniform")) == pytest.approx({"a": 0.5, "b": 0.5})
    # capped at 300: weights 300 and 100 -> 0.75 / 0.25
    assert task_probabilities(sizes, SamplerConfig(kind="capped", cap=300)) == pytest.approx({"a": 0.75, "b": 0.25})
    # temperature 2: sqrt(900)=30, sqrt(100)=10 -> 0.75 / 0.25
    assert task_probabilities(sizes, SamplerConfig(kind="temperature", temperature=2.0)) == pytest.approx(
        {"a": 0.75, "b": 0.25})


def test_lr_schedule_is_transformers_linear_warmup_and_decay():
    # warmup 3 of 10 steps: 0, 1/3, 2/3, then 1 at step 3, decaying by 1/7 a step (transformers, jiant).
    import torch
    from transformers import get_linear_schedule_with_warmup

    from stilts_xling.train import _linear_schedule

    def lrs(make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched, out = make(opt), []
        for _ in range(10):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    ours = lrs(lambda opt: _linear_schedule(opt, 3, 10))
    assert ours == pytest.approx([0, 1 / 3, 2 / 3, 1, 6 / 7, 5 / 7, 4 / 7, 3 / 7, 2 / 7, 1 / 7])
    assert ours == lrs(lambda opt: get_linear_schedule_with_warmup(opt, 3, 10))


def test_total_steps_follow_jiant():
    sizes, epochs, batch = {"a": 900, "b": 100}, {"a": 2, "b": 3}, {"a": 32, "b": 16}
    # whole batches per epoch, as jiant's configurators: 2*ceil(900/32) = 2*29 = 58 + 3*ceil(100/16) = 3*7 = 21
    assert total_steps(sizes, epochs, batch, SamplerConfig()) == 79
    # capped at 300: 2*ceil(300/32) = 2*10 = 20 + 21
    assert total_steps(sizes, epochs, batch, SamplerConfig(kind="capped", cap=300)) == 41
    assert total_steps(sizes, epochs, batch, SamplerConfig(), max_steps=10) == 10
    # a fractional epoch count: ceil(0.5 * ceil(900/32)) = ceil(14.5) = 15
    assert total_steps({"a": 900}, {"a": 0.5}, {"a": 32}, SamplerConfig()) == 15
