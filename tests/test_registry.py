import pytest

from stilts_xling.languages import XTREME_LANGUAGES
from stilts_xling.readers import READERS
from stilts_xling.tasks.registry import FAMILIES, TASKS, get_task


def test_get_task_suggests():
    assert get_task("mnli").name == "mnli"
    with pytest.raises(KeyError, match="did you mean 'xnli'"):
        get_task("xnl")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_spec_is_consistent(name):
    spec = TASKS[name]
    assert spec.family in FAMILIES
    assert set(spec.phases) <= {"intermediate", "xtreme"} and spec.phases
    if spec.files:
        assert spec.files.reader in READERS or spec.family == "retrieval"
        assert "{dir}" in spec.files.hint
        assert "{{" not in spec.files.hint and "}}" not in spec.files.hint  # the hint is not a format string
    if spec.family == "tagging":
        from stilts_xling.tasks.tagging import _TAG_PIECE

        assert spec.tag_piece in _TAG_PIECE
    if spec.train_task:
        assert get_task(spec.train_task).family == spec.family
    for extra in spec.extra_train:
        assert get_task(extra).labels == spec.labels
    if "xtreme" in spec.phases:
        if name in XTREME_LANGUAGES:  # GLUE and XTREME-R targets have their own language lists
            assert spec.languages == XTREME_LANGUAGES[name]
        assert spec.group


def test_paper_tasks_are_registered():
    intermediate = {"anli", "mnli", "qqp", "squad_v1", "squad_v2", "hellaswag", "commonsenseqa", "cosmosqa", "ccg"}
    targets = {"xnli", "pawsx", "udpos", "panx", "xquad", "mlqa", "tydiqa", "bucc2018", "tatoeba"}
    assert intermediate <= {n for n, s in TASKS.items() if "intermediate" in s.phases}
    assert targets <= {n for n, s in TASKS.items() if "xtreme" in s.phases}
