"""Tables as data (cells: `Stat` mean ± std over seeds, `Delta`, text, or None for "-") and their
markdown, LaTeX (booktabs) and CSV renderings. Cell types dispatch through dicts keyed by type."""
from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .files import write_atomic


@dataclass
class Stat:
    """Mean ± sample std (n-1) over seeds; std is None for one seed."""
    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass
class Delta:
    value: float
    n: Optional[int] = None  # how many (task, language) pairs a gain averages, when it is a pooled gain


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]]  # cells: Stat, Delta, str or None


def _fmt(cell: Any, pm: str, digits: int) -> str:
    def stat(c: Stat) -> str:
        return f"{c.mean:.{digits}f}{pm}{'-' if c.std is None else f'{c.std:.{digits}f}'}"

    def delta(c: Delta) -> str:
        return f"{c.value:+.{digits}f}" + (f" (n={c.n})" if c.n is not None else "")

    return {Stat: stat, Delta: delta, str: str, type(None): lambda _: "-"}[type(cell)](cell)


def to_markdown(table: Table, digits: int = 1) -> str:
    lines = [f"### {table.title}", "", "| " + " | ".join(table.columns) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(table.columns) - 1)) + "|"]
    lines += ["| " + " | ".join(_fmt(c, " ± ", digits) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _tex_escape(text: str) -> str:
    special = {"_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$", "±": r"$\pm$"}
    return "".join(special.get(ch, ch) for ch in text)


def to_latex(table: Table, digits: int = 1) -> str:
    body = [" & ".join(_tex_escape(c) if type(c) is str else _fmt(c, r" $\pm$ ", digits) for c in row) + r" \\"
            for row in table.rows]
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\small",
                      r"\begin{tabular}{l" + "r" * (len(table.columns) - 1) + "}", r"\toprule",
                      " & ".join(map(_tex_escape, table.columns)) + r" \\", r"\midrule", *body, r"\bottomrule",
                      r"\end{tabular}", rf"\caption{{{_tex_escape(table.title)}}}", rf"\label{{tab:{table.name}}}",
                      r"\end{table}"])


def write_table_csv(table: Table, path: Path) -> None:
    """Numbers, not strings: a Stat column becomes `<col>` (mean) and `<col>_std`."""
    has_stat = [any(type(row[i]) is Stat for row in table.rows) for i in range(len(table.columns))]
    header = [h for col, s in zip(table.columns, has_stat) for h in ([col, f"{col}_std"] if s else [col])]
    to_cells = {Stat: lambda c: [round(c.mean, 6), "" if c.std is None else round(c.std, 6)],
                Delta: lambda c: [round(c.value, 6)], str: lambda c: [c], type(None): lambda c: [""]}
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in table.rows:
        cells = []
        for cell, s in zip(row, has_stat):
            values = to_cells[type(cell)](cell)
            cells += values + [""] * (1 + s - len(values))
        writer.writerow(cells)
    write_atomic(path, buffer.getvalue())
