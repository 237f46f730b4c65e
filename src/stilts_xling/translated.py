"""Intermediate training on machine-translated data: the paper's alternative (b) (facts.md 1.5).

A translated task (`mnli_mt`: XNLI-MT 1.0; `squad_mt`: XTREME's translate-train SQuAD v1.1) is an
intermediate task whose `train_task` names the English task it was translated from. Its spec lists every
language a translation exists for; a run trains on the languages in
`intermediate.task_options.<task>.languages` (default: every translation, without English), all read
with the spec's own reader and concatenated. "en" in that list means the English original's training
data, so "translated alone" and "translated mixed with English" are one option apart:

    intermediate.task_options.mnli_mt.languages: [de, zh]        # translations only
    intermediate.task_options.mnli_mt.languages: [en, de, zh]    # English MNLI plus the translations

Mixing through multi-task training instead (a head per task) is `intermediate.tasks: [mnli, mnli_mt]`.
There is no translated dev set, so model selection uses the English original's dev split, by the same
rule as XTREME targets: the dev split of `train_task`.

The same mechanism serves an intermediate task with text of its own in several languages (`mlm`: one
file per language, no `train_task`): `languages` picks among the spec's languages, "en" is its own
English file, and the default is every language of the spec.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .config import ExperimentConfig, TaskOptions
from .data import load_examples
from .tasks.base import TaskSpec
from .tasks.registry import get_task


def applies(spec: TaskSpec) -> bool:
    """Whether `spec` is an intermediate task trained on several languages: a translated one (its data
    derive from `train_task`) or one with multilingual data of its own (mlm)."""
    return "intermediate" in spec.phases and (spec.train_task is not None or len(spec.languages) > 1)


def languages(spec: TaskSpec, options: Optional[TaskOptions]) -> tuple[str, ...]:
    """The training languages: the configured list, else every translation (English excluded), or every
    language of a task with its own multilingual data."""
    chosen = options.languages if options is not None else None
    langs = tuple(chosen) if chosen else tuple(lang for lang in spec.languages
                                               if lang != "en" or not spec.train_task)
    problems = option_problems(spec, langs)
    if problems:
        raise ValueError(f"{spec.name}: " + "; ".join(problems))
    return langs


def option_problems(spec: TaskSpec, langs: Sequence[str]) -> list[str]:
    """What is wrong with a `languages` option for `spec` (empty when nothing is); for config checks."""
    if not applies(spec):
        return [(f"{spec.name!r} has no translated training data; `languages` applies to translated "
                 "intermediate tasks such as mnli_mt, and to mlm")]
    what = "translation" if spec.train_task else f"{spec.name} data"
    out = [f"{lang!r} has no {what} (choose from {', '.join(spec.languages)})"
           for lang in langs if lang not in spec.languages]
    if len(set(langs)) != len(langs):
        out.append(f"languages {list(langs)} repeat a language, which would repeat its data")
    if not langs:
        out.append("empty language list; leave the option out for every translation")
    return out


Need = tuple[TaskSpec, str, str, Optional[TaskOptions]]  # (task, split, language, options) to load


def train_needs(spec: TaskSpec, options: Optional[TaskOptions]) -> list[Need]:
    """What each chosen training language loads: English from the source task's own files (a translated
    task has no English copy), every other language from the translations."""
    source = get_task(spec.train_task) if spec.train_task else None
    return [(source, "train", "en", None) if lang == "en" and source else (spec, "train", lang, options)
            for lang in languages(spec, options)]


def train_examples(spec: TaskSpec, cfg: ExperimentConfig, options: Optional[TaskOptions]) -> list[dict]:
    """Every chosen language's training examples, concatenated in the order configured.

    Ids get a "<lang>-" prefix: XNLI-MT rows are numbered per file, so "7" exists in every language."""
    out: list[dict] = []
    for task, split, lang, opts in train_needs(spec, options):
        out += [{**ex, "id": f"{lang}-{ex['id']}"} for ex in load_examples(task, split, lang, cfg, opts)]
    return out
