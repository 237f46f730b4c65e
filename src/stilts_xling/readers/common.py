"""Shared pieces of the readers: ``DataError`` and the line, JSON lines, tab-separated and SQuAD-document
helpers every format module builds on (``_lines``, ``_jsonl``, ``_tsv``, ``load_squad_doc``), the field and
label checks that turn malformed input into ``DataError("file:line: what is wrong; how to fix")``
(``_err``, ``_get``, ``_label``, ``_nonempty``) and the classification record builder ``_pair``. Reads no
format of its own.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator


class DataError(ValueError):
    """A data file is malformed or empty; the message says where and how to fix it."""


def _err(path: Path, where: Any, what: str, fix: str) -> DataError:
    return DataError(f"{path}:{where}: {what}; {fix}")


def _nonempty(records: list[dict], path: Path, lang: str | None = None, what: str = "records") -> list:
    if not records:
        flt = f" for language {lang!r}" if lang else ""
        raise DataError(f"{path}: no {what} found{flt}; check the file and the language filter")
    return records


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    # Split at "\n" only: universal newlines would also split at a lone "\r" inside a field. Bytes are
    # decoded line by line so that a byte that is not UTF-8 is reported with its line; a BOM an editor
    # added is dropped.
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _err(path, n, f"byte {raw[e.start:e.start + 1]!r} at column {e.start + 1} is not UTF-8",
                           "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8) or re-download it") from None
            yield n, line.rstrip("\n").removesuffix("\r")


def _not_utf8(path: Path, err: UnicodeDecodeError) -> DataError:
    return _err(path, f"byte {err.start + 1}", "not UTF-8 text", "convert the file to UTF-8 or re-download it")


def _tab_fields(path: Path, count: int, expected: str, fix: str) -> Iterator[tuple[int, list[str]]]:
    """The non-blank lines of a headerless TSV as (line number, fields), each line with exactly `count`
    tab-separated fields; `expected` and `fix` word the error for a line that has another number."""
    for n, line in _lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != count:
            raise _err(path, n, f"expected {expected}; the line has {len(fields)} tab-separated fields", fix)
        yield n, fields


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _err(path, n, f"invalid JSON ({e.msg} at column {e.colno})",
                       "each line must hold one complete JSON object") from None
        if not isinstance(obj, dict):
            raise _err(path, n, f"expected a JSON object, got {type(obj).__name__}", "one object per line")
        yield n, obj


_KIND_NAMES = {str: "text (a JSON string)", list: "a list", int: "an integer", dict: "an object"}


def _get(obj: dict, key: str, path: Path, where: Any, kind: type | None = None) -> Any:
    """obj[key], which must exist and, given `kind`, be of that type: a null or a number where text
    belongs would otherwise surface as a crash in the tokenizer, far from the record."""
    if not isinstance(obj, dict):
        raise _err(path, where, f"expected an object holding {key!r}, got {_json_type(obj)}",
                   "use the original file format")
    if key not in obj:
        raise _err(path, where, f"missing field {key!r}", f"the record needs {key!r} (original format)")
    value = obj[key]
    if kind is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise _err(path, where, f"field {key!r} is {_json_type(value)}, expected {_KIND_NAMES[kind]}",
                   "fix or drop the record")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__) + f" ({json.dumps(value)[:40]})"


def _label(value: str, allowed, path: Path, where: Any, aliases: dict | None = None) -> str:
    value = (aliases or {}).get(value, value)
    if value not in allowed:
        raise _err(path, where, f"label {value!r} is not one of {sorted(allowed)}", "fix or drop the record")
    return value


def _tsv(path: Path, required: tuple[str, ...], join_broken: bool = False,
         ragged: bool = False) -> Iterator[tuple[int, dict]]:
    """Header-driven tab-separated rows, no quote processing (QUOTE_NONE: XNLI/MNLI text holds quotes).

    ``ragged`` accepts rows that stop early after all required columns: SNLI/MNLI train rows omit
    the empty label2..label5 annotator columns.

    ``join_broken`` repairs one known defect: the pre-2019 GLUE QQP release wrote questions with an
    embedded line break as a csv-quoted field ("...\\n"), so one record spans two lines.
    """
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(f"{path}: empty file; expected a header line naming the columns")
    cols = first[1].split("\t")
    missing = [c for c in required if c not in cols]
    if missing:
        raise _err(path, 1, f"header lacks column(s) {missing} (found {cols})", "use the original file with its header")
    need = max(cols.index(c) for c in required) + 1
    for n, line in lines:
        if not line.strip():
            continue  # a trailing blank line
        fields = line.split("\t")
        while join_broken and len(fields) < len(cols) and fields[-1].startswith('"'):
            nxt = next(lines, None)
            if nxt is None:
                break
            rest = nxt[1].split("\t")
            fields = fields[:-1] + [fields[-1] + "\n" + rest[0]] + rest[1:]
        if ragged and need <= len(fields) < len(cols):
            fields += [""] * (len(cols) - len(fields))
        if len(fields) != len(cols):
            raise _err(path, n, f"expected {len(cols)} tab-separated columns as in the header, found {len(fields)}",
                       "fields must not contain tabs or line breaks; re-download the original file")
        if join_broken:
            fields = [f[1:-1].replace('""', '"').strip() if "\n" in f and f[:1] == f[-1:] == '"' else f
                      for f in fields]
        yield n, dict(zip(cols, fields))


def _pair(id_: str, a: str, b: str | None, label: str | None) -> dict:
    return {"id": id_, "text_a": a, "text_b": b, "label": label}


def load_squad_doc(path: Path) -> dict:
    """A SQuAD-layout json document ({"data": [...]}), or a DataError naming the file and line."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise _err(path, e.lineno, f"invalid JSON ({e.msg})", "re-download the file") from None
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise _err(path, 1, "expected an object with a 'data' list", "use the SQuAD json layout")
    return doc
