"""The task registry: every family module contributes its `FAMILY` and its `TASKS` entries."""
from __future__ import annotations

import difflib

from . import classification, dual_encoder, mlm, multiple_choice, regression, tagging, span_qa, retrieval
from .base import Family, TaskSpec

_MODULES = [classification, multiple_choice, tagging, span_qa, retrieval, dual_encoder, regression, mlm]

FAMILIES: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in _MODULES}
TASKS: dict[str, TaskSpec] = {spec.name: spec for m in _MODULES for spec in m.TASKS}


def get_task(name: str) -> TaskSpec:
    """The spec for `name`; KeyError with a did-you-mean when there is none."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown task {name!r}{hint} (`stilts tasks` lists them all)")
    return TASKS[name]


def family_of(spec: TaskSpec) -> Family:
    return FAMILIES[spec.family]
