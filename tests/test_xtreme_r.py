"""XTREME-R as a config key: `xtreme.benchmark: xtreme-r` picks its longer language lists and its score."""
import pytest

from conftest import SMOKE
from stilts_xling.config import ConfigError, load_config
from stilts_xling.languages import XTREME_LANGUAGES, XTREME_R_LANGUAGES
from stilts_xling.pipeline import target_languages
from stilts_xling.tasks.registry import get_task


def test_benchmark_chooses_the_default_language_lists():
    xtreme = load_config(SMOKE, ["xtreme.languages={}", "xtreme.tasks=[udpos,panx,tatoeba,xquad]"])
    xtreme_r = load_config(SMOKE, ["xtreme.languages={}", "xtreme.tasks=[udpos,panx,tatoeba,xquad]", "xtreme.benchmark=xtreme-r"])
    for task, added in {"udpos": {"lt", "pl", "uk", "wo", "ro"}, "panx": {"qu", "pl", "uk", "az", "lt", "pa", "gu", "ro"},
                        "tatoeba": {"az", "lt", "pl", "uk", "ro"}, "xquad": {"ro"}}.items():
        plain, longer = target_languages(xtreme, get_task(task)), target_languages(xtreme_r, get_task(task))
        assert set(plain) == set(XTREME_LANGUAGES[task])
        assert set(longer) - set(plain) == added and set(longer) == set(XTREME_R_LANGUAGES[task])
    # An explicit list still wins over the benchmark's.
    chosen = load_config(SMOKE, ["xtreme.languages={}", "xtreme.tasks=[udpos]", "xtreme.benchmark=xtreme-r", "xtreme.languages.udpos=[en,lt]"])
    assert target_languages(chosen, get_task("udpos")) == ("en", "lt")


def test_xtreme_r_languages_validate_and_unknown_ones_are_named():
    load_config(SMOKE, ["xtreme.languages={}", "xtreme.tasks=[panx]", "xtreme.languages.panx=[en,qu,gu]"])
    with pytest.raises(ConfigError, match=r"xtreme.languages.panx: 'xx' is not a panx language"):
        load_config(SMOKE, ["xtreme.languages={}", "xtreme.tasks=[panx]", "xtreme.languages.panx=[en,xx]"])
    with pytest.raises(ConfigError, match=r"xtreme.benchmark: 'xtreme-s' is not one of .*did you mean 'xtreme-r'"):
        load_config(SMOKE, ["xtreme.benchmark=xtreme-s"])


def test_smoke_xtreme_r_runs_all_ten_targets_and_prints_the_score(tmp_path, cli):
    import re

    from conftest import REPO
    from stilts_xling.metrics import XTREME_R_TASKS, task_average, xtreme_r_score
    from stilts_xling.results import read_rows

    config = REPO / "configs" / "smoke" / "xtreme_r.yaml"
    result = cli("eval-xtreme", config, f"run_dir={tmp_path / 'run'}")
    assert result.exit_code == 0, result.output
    rows = [r for r in read_rows(tmp_path / "run" / "results.jsonl") if r["phase"] == "xtreme"]
    per_task: dict = {}
    for r in rows:
        per_task.setdefault(r["task"], {}).setdefault(r["language"], {})[r["metric"]] = r["value"]
    assert set(per_task) == set(XTREME_R_TASKS)
    wanted = load_config(config).xtreme.languages
    assert all(set(per_task[t]) == set(wanted[t]) for t in XTREME_R_TASKS)
    scores = {t: task_average(per_task[t], t) for t in XTREME_R_TASKS}
    printed = re.search(r"XTREME-R score: (\d+\.\d)", result.output)
    assert printed and float(printed.group(1)) == pytest.approx(xtreme_r_score(scores), abs=0.05)
    assert "XTREME score" not in result.output.replace("XTREME-R score", "")
