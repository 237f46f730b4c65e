"""`stilts_xling.report`: tables checked against hand-computed numbers from synthetic results.jsonl files,
plus one report over real (tiny) runs made through the CLI."""
import csv
import json
import statistics
import sys
from pathlib import Path

import pytest
import yaml

from conftest import SMOKE, run_cli
from stilts_xling.config import hash_dict
from stilts_xling.report import build_report

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(root: Path, name: str, intermediate: list, seed: int, scores: dict, extra_config: dict = None,
              rows_before: list = ()) -> Path:
    """A run dir with a config.yaml and results.jsonl; scores = {task: {lang: {metric: value}}}."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"run_dir": str(run_dir), "seed": seed, "intermediate": {"tasks": intermediate, **(extra_config or {})}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    digest = hash_dict(config)  # = config.config_hash of the run
    base = {"run": name, "phase": "xtreme", "intermediate": intermediate, "split": "dev", "seed": seed,
            "model": "m", "config_hash": digest, "timestamp": "2024-01-01T00:00:00"}
    rows = [{**base, **r} for r in rows_before]
    rows += [{**base, "task": task, "language": lang, "metric": metric, "value": value}
             for task, langs in scores.items() for lang, metrics in langs.items() for metric, value in metrics.items()]
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def xnli(en, de, ar):
    return {"en": {"accuracy": en}, "de": {"accuracy": de}, "ar": {"accuracy": ar}}


def xquad(en_em, en_f1, de_em, de_f1):
    return {"en": {"exact_match": en_em, "f1": en_f1}, "de": {"exact_match": de_em, "f1": de_f1}}


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    # baseline  s1: xnli (80+70+60)/3 = 70; xquad (avg EM 50 + avg F1 70)/2 = 60; avg 65
    #           s2: xnli 72; xquad (52 + 72)/2 = 62; avg 67
    write_run(root, "base_s1", [], 1, {"xnli": xnli(80, 70, 60), "xquad": xquad(60, 80, 40, 60)})
    write_run(root, "base_s2", [], 2, {"xnli": xnli(82, 72, 62), "xquad": xquad(62, 82, 42, 62)})
    # mnli      s1: xnli (84+76+68)/3 = 76; xquad ((60+44)/2 + (80+64)/2)/2 = (52+72)/2 = 62; avg 69
    #           s2: xnli 78; xquad ((62+46)/2 + (84+67.2)/2)/2 = (54+75.6)/2 = 64.8; avg 71.4
    # A stale de row comes first in s1 (same run, hash, seed, task, language, split, metric): the last wins.
    # A test-split row must not leak into the dev tables.
    stale = [{"task": "xnli", "language": "de", "metric": "accuracy", "value": 10.0},
             {"task": "xnli", "language": "de", "metric": "accuracy", "value": 99.0, "split": "test"}]
    write_run(root, "mnli_s1", ["mnli"], 1, {"xnli": xnli(84, 76, 68), "xquad": xquad(60, 80, 44, 64)},
              rows_before=stale)
    write_run(root, "mnli_s2", ["mnli"], 2, {"xnli": xnli(86, 80, 68), "xquad": xquad(62, 84, 46, 67.2)})
    # squad_v1  s1: xnli 72; xquad ((70+50)/2 + (86+70)/2)/2 = (60+78)/2 = 69; avg 70.5
    write_run(root, "squad_s1", ["squad_v1"], 1, {"xnli": xnli(80, 74, 62), "xquad": xquad(70, 86, 50, 70)})
    # multi     s1: xnli only, (85+78+70)/3 = 77.666...
    write_run(root, "multi_s1", ["mnli", "squad_v1"], 1, {"xnli": xnli(85, 78, 70)})
    return root


def md_rows(text: str, title: str) -> list[list[str]]:
    """Header and body rows (cells stripped) of the markdown table under `### title`."""
    lines = text.split(f"### {title}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for i, line in enumerate(lines) if i != 1]


def md_table(text: str, title: str) -> dict:
    """{row label: {column: cell}} of the markdown table under `### title`."""
    header, *rows = md_rows(text, title)
    return {r[0]: dict(zip(header[1:], r[1:])) for r in rows}


def test_main_delta_and_language_tables_match_hand_computed_numbers(runs, tmp_path):
    out = tmp_path / "report"
    result = build_report([runs], out)
    md = (out / "report.md").read_text()

    main = md_table(md, "Target-task scores (dev, mean ± std over seeds)")
    assert list(main) == ["baseline", "mnli", "squad_v1", "mnli+squad_v1"]  # baseline, singles, multi-task
    # baseline: xnli 70, 72 -> 71 ± sqrt(2) = 1.414; xquad 60, 62 -> 61 ± 1.4; avg 65, 67 -> 66 ± 1.4
    assert main["baseline"] == {"xnli": "71.0 ± 1.4", "xquad": "61.0 ± 1.4", "avg": "66.0 ± 1.4", "XTREME": "-"}
    # mnli: xnli 76, 78 -> 77 ± 1.4; xquad 62, 64.8 -> 63.4 ± 2.8/sqrt(2) = 1.98; avg 69, 71.4 -> 70.2 ± 1.70
    assert main["mnli"] == {"xnli": "77.0 ± 1.4", "xquad": "63.4 ± 2.0", "avg": "70.2 ± 1.7", "XTREME": "-"}
    assert main["squad_v1"] == {"xnli": "72.0 ± -", "xquad": "69.0 ± -", "avg": "70.5 ± -", "XTREME": "-"}
    assert main["mnli+squad_v1"] == {"xnli": "77.7 ± -", "xquad": "-", "avg": "77.7 ± -", "XTREME": "-"}

    delta = md_table(md, "Difference to baseline (mean over seeds)")
    assert "baseline" not in delta
    # 77 - 71; 63.4 - 61; 70.2 - 66
    assert delta["mnli"] == {"xnli": "+6.0", "xquad": "+2.4", "avg": "+4.2", "XTREME": "-"}
    assert delta["squad_v1"] == {"xnli": "+1.0", "xquad": "+8.0", "avg": "+4.5", "XTREME": "-"}
    assert delta["mnli+squad_v1"]["xnli"] == "+6.7" and delta["mnli+squad_v1"]["xquad"] == "-"

    per_lang = md_table(md, "xnli: per language")
    assert list(per_lang["mnli"]) == ["en", "ar", "de", "avg"]  # English first, then XTREME's order
    # de: 76 (the stale 10 and the test-split 99 are ignored) and 80 -> 78 ± 2.83
    assert per_lang["mnli"] == {"en": "85.0 ± 1.4", "ar": "68.0 ± 0.0", "de": "78.0 ± 2.8", "avg": "77.0 ± 1.4"}
    # QA per language is (EM+F1)/2: mnli de (44+64)/2 = 54 and (46+67.2)/2 = 56.6 -> 55.3 ± 1.84
    assert md_table(md, "xquad: per language")["mnli"]["de"] == "55.3 ± 1.8"

    gap = md_rows(md, "English vs non-English (en minus the mean of the other languages)")
    # baseline xnli: 80 - (70+60)/2 = 15 and 82 - 67 = 15; xquad: 70 - 50 = 20 and 72 - 52 = 20
    assert ["baseline", "xnli", "81.0 ± 1.4", "66.0 ± 1.4", "15.0 ± 0.0"] in gap
    assert ["baseline", "xquad", "71.0 ± 1.4", "51.0 ± 1.4", "20.0 ± 0.0"] in gap

    script = md_table(md, "Gain over baseline by script (mean over target x non-English language; n pairs)")
    assert script["mnli"]["Arabic"] == "+7.0 (n=1)"  # xnli ar 68 - 61
    # Latin: xnli de 78 - 71 = 7 and xquad de 55.3 - 51 = 4.3 -> 5.65
    latin = [r for r in result["records"] if r["setting"] == "mnli" and r["quantity"] == "gain"
             and r["script"] == "Latin"]
    assert latin[0]["mean"] == pytest.approx(5.65) and latin[0]["n"] == 2

    tidy = list(csv.DictReader((out / "report.csv").open()))
    row = next(r for r in tidy if r["setting"] == "mnli" and r["task"] == "xnli" and r["quantity"] == "score"
               and r["language"] == "")
    assert float(row["mean"]) == 77.0 and float(row["std"]) == pytest.approx(2 ** 0.5) and row["n"] == "2"
    with (out / "table_main.csv").open() as f:
        assert next(csv.reader(f))[:3] == ["intermediate", "xnli", "xnli_std"]

    tex = (out / "report.tex").read_text()
    assert r"\toprule" in tex and r"77.0 $\pm$ 1.4" in tex and r"mnli+squad\_v1" in tex

    heatmap = out / "heatmap_delta.png"
    assert heatmap.read_bytes().startswith(PNG) and heatmap.stat().st_size > 1000
    assert (out / "bars_xnli.png").read_bytes().startswith(PNG)


def test_xtreme_score_needs_all_nine_targets_and_follows_qa_metric(tmp_path):
    scores = {"xnli": {"en": {"accuracy": 90}}, "pawsx": {"en": {"accuracy": 80}}, "udpos": {"en": {"f1": 70}},
              "panx": {"en": {"f1": 60}}, "xquad": {"en": {"exact_match": 40, "f1": 60}},
              "mlqa": {"en": {"exact_match": 30, "f1": 50}}, "tydiqa": {"en": {"exact_match": 50, "f1": 70}},
              "bucc2018": {"de": {"f1": 30}}, "tatoeba": {"de": {"accuracy": 20}}}
    write_run(tmp_path / "runs", "all", [], 1, scores)
    # (EM+F1)/2 for QA: (90+80+70+60+50+40+60+30+20)/9 = 500/9 = 55.56
    main = build_report([tmp_path / "runs"], tmp_path / "a", plots=False)["tables"]["main"]
    assert main.rows[0][-1].mean == pytest.approx(500 / 9)
    # F1 for QA: (90+80+70+60+60+50+70+30+20)/9 = 530/9 = 58.89
    md = (tmp_path / "b" / "report.md")
    build_report([tmp_path / "runs"], tmp_path / "b", qa_metric="f1", formats=("md",), plots=False)
    main = md_table(md.read_text(), "Target-task scores (dev, mean ± std over seeds)")
    assert main["baseline"]["XTREME"] == "58.9 ± -"
    assert not (tmp_path / "b" / "report.tex").exists()


def test_targets_scored_on_fewer_languages_than_the_benchmark_get_a_note(tmp_path):
    pawsx = {lang: {"accuracy": 80} for lang in ("de", "en", "es", "fr", "ja", "ko")}  # all 7 but zh
    udpos = {lang: {"f1": 70} for lang in "af ar bg de el en es et eu fa fi fr he hi hu id it ja ko mr nl pt ru ta "
                                         "te tr ur vi zh".split()}  # every language with UD dev data
    write_run(tmp_path / "runs", "part", [], 1, {"pawsx": pawsx, "udpos": udpos, "xnli": xnli(80, 70, 60)})
    notes = build_report([tmp_path / "runs"], tmp_path / "out", formats=(), plots=False)["notes"]
    coverage = sorted(n for n in notes if "the benchmark's" in n)
    assert len(coverage) == 2  # pawsx and xnli; UD-POS's four test-only languages have no dev split
    assert coverage[0] == "baseline pawsx: 6 languages on dev, missing 1 of the benchmark's (zh); its average is not " \
                          "the benchmark's"
    assert coverage[1].startswith("baseline xnli: 3 languages on dev, missing 12 of the benchmark's (bg, el, es, ")


def test_configs_that_differ_in_a_training_key_are_separate_settings(tmp_path):
    root = tmp_path / "runs"
    for name, lr, seed, value in [("a1", 1e-5, 1, 60), ("a2", 1e-5, 2, 62), ("b1", 2e-5, 1, 70)]:
        write_run(root, name, ["mnli"], seed, {"xnli": {"en": {"accuracy": value}}},
                  extra_config={"train": {"lr": lr}})
    tables = build_report([root], tmp_path / "out", formats=(), plots=False)["tables"]
    cells = {row[0]: row[1] for row in tables["main"].rows}
    assert cells["mnli [intermediate.train.lr=1e-05]"].values == [60, 62]
    assert cells["mnli [intermediate.train.lr=2e-05]"].values == [70]


def test_runs_archived_by_new_run_are_left_out_unless_named(tmp_path):
    root = tmp_path / "runs"
    run = write_run(root, "mnli", ["mnli"], 1, {"xnli": {"en": {"accuracy": 70}}})
    old = write_run(run / "archive", "20261204-120000", ["mnli"], 1, {"xnli": {"en": {"accuracy": 40}}},
                    extra_config={"train": {"lr": 1e-5}})
    result = build_report([root], tmp_path / "out", formats=(), plots=False)
    assert [(row[0], row[1].values) for row in result["tables"]["main"].rows] == [("mnli", [70])]
    assert f"left out 1 archived run(s) (--new-run moved them aside), e.g. {old}; name one to report it" \
        in result["notes"]
    named = build_report([old], tmp_path / "out2", formats=(), plots=False)["tables"]["main"]
    assert [row[1].values for row in named.rows] == [[40]]


def test_missing_matplotlib_is_a_note_not_an_error(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    result = build_report([runs], tmp_path / "out")
    assert any("matplotlib is not installed" in n for n in result["notes"])
    assert not list((tmp_path / "out").glob("*.png"))
    assert "matplotlib is not installed" in (tmp_path / "out" / "report.md").read_text()


def test_no_results_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no results.jsonl"):
        build_report([tmp_path], tmp_path / "out")
    with pytest.raises(ValueError, match="no such run dir"):
        build_report([tmp_path / "nope"], tmp_path / "out")


def test_report_over_real_cli_runs(tmp_path):
    quick = ["intermediate.train.max_steps=3", "xtreme.train.max_steps=3", "xtreme.languages={xnli: [en, de]}",
             "xtreme.splits=[dev]"]
    for name, extra in [("base", ["intermediate.tasks=[]"]), ("mnli", [])]:
        assert run_cli("run", SMOKE, *quick, *extra, f"run_dir={tmp_path / 'runs' / name}").exit_code == 0
    result = build_report([tmp_path / "runs"], tmp_path / "out")
    for name, label in [("base", "baseline"), ("mnli", "mnli")]:
        rows = [json.loads(line) for line in (tmp_path / "runs" / name / "results.jsonl").read_text().splitlines()]
        accuracy = [r["value"] for r in rows if r["phase"] == "xtreme" and r["metric"] == "accuracy"]
        main = {row[0]: row[1] for row in result["tables"]["main"].rows}
        assert main[label].mean == pytest.approx(statistics.fmean(accuracy))  # xnli = mean over en, de
    assert (tmp_path / "out" / "heatmap_delta.png").read_bytes().startswith(PNG)
    assert (tmp_path / "out" / "curves_mnli.png").read_bytes().startswith(PNG)  # from intermediate/history.json


def test_data_scaling_plot_from_a_volume_sweep(tmp_path, cli):
    """Two MNLI runs that differ only in max_train_examples become one scaling curve."""
    for n in (60, 300):
        result = cli("run", SMOKE, f"run_dir={tmp_path / f'n{n}'}",
                     f"intermediate.task_options.mnli.max_train_examples={n}", "intermediate.train.max_steps=4",
                     "xtreme.train.max_steps=4", "xtreme.languages={xnli: [en, de]}", "xtreme.splits=[dev]")
        assert result.exit_code == 0, result.output
    out = tmp_path / "report"
    result = build_report([tmp_path / "n60", tmp_path / "n300"], out)
    png = out / "scaling_max_train_examples.png"
    assert png in result["files"] and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [row[0] for row in result["tables"]["main"].rows]
    assert any("max_train_examples=60" in label for label in labels)
    assert any("max_train_examples=300" in label for label in labels)


def test_xtreme_r_score_column_appears_with_all_ten_targets(tmp_path):
    shared = {"xnli": {"en": {"accuracy": 90}}, "udpos": {"en": {"f1": 70}}, "panx": {"en": {"f1": 60}},
              "xquad": {"en": {"exact_match": 40, "f1": 60}}, "mlqa": {"en": {"exact_match": 30, "f1": 50}},
              "tydiqa": {"en": {"exact_match": 50, "f1": 70}}, "tatoeba": {"de": {"accuracy": 20}}}
    r_only = {"xcopa": {"it": {"accuracy": 56}, "zh": {"accuracy": 64}},
              "mewslix": {"ar": {"map@20": 30}, "ja": {"map@20": 40}}, "lareqa": {"en": {"map@20": 25}}}
    write_run(tmp_path / "runs", "base", [], 1, {**shared, **r_only})
    write_run(tmp_path / "runs", "mnli", ["mnli"], 1, {**shared, **r_only, "lareqa": {"en": {"map@20": 35}}})
    tables = build_report([tmp_path / "runs"], tmp_path / "out", plots=False, formats=("md",))["tables"]
    main = tables["main"]
    assert main.columns[-2:] == ["XTREME", "XTREME-R"]
    # xnli 90, xcopa (56+64)/2 = 60, udpos 70, panx 60, xquad 50, mlqa 40, tydiqa 60, tatoeba 20,
    # mewslix (30+40)/2 = 35, lareqa 25: 510/10 = 51.0; no PAWS-X/BUCC, so no XTREME score
    base = main.rows[[r[0] for r in main.rows].index("baseline")]
    assert base[-1].mean == pytest.approx(51.0) and base[-2] is None
    assert tables["delta"].rows[0][-1].value == pytest.approx(1.0)  # lareqa +10 over ten targets
    md = md_table((tmp_path / "out" / "report.md").read_text(), "Target-task scores (dev, mean ± std over seeds)")
    assert md["baseline"]["XTREME-R"] == "51.0 ± -" and md["baseline"]["mewslix"] == "35.0 ± -"
