"""A user's own labelled text: CSV or JSONL files with named text and label columns.

    --config.task.dataset=files --config.task.files.train=train.csv \\
        --config.task.files.validation=dev.csv --config.task.files.test=test.csv \\
        --config.task.text_column=sentence --config.task.label_column=label

or one file with a split column (``--config.task.split_column=split``, its values ``train``,
``validation`` and ``test``) given as ``task.files.train``. A file is CSV (``.csv``, with a header
row) or JSON lines (``.jsonl``, one object a line). Labels may be integers (used as they are;
the classes are ``0 .. max``) or strings (numbered in sorted order over all the files). Every
error names the file, the line and the fix.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path

from experiments.data.sources import DataUnavailableError

SPLITS = ("train", "validation", "test")


class UserDataError(DataUnavailableError):
    """A user data file that cannot be read as asked; the message says what to change."""


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserDataError(f"task.files: {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        if suffix in (".jsonl", ".json"):
            rows = []
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise UserDataError(f"{path}, line {n}: not JSON ({e.msg})") from None
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserDataError(f"cannot read {path}: {e}") from None
    raise UserDataError(f"task.files: {path} is neither .csv nor .jsonl")


def read_files(files: Mapping[str, str], text_column: str, label_column: str,
               split_column: str = "") -> tuple[dict[str, list[dict]], tuple[str, ...] | None]:
    """``({split: [{"text", "label"}]}, label names or None)`` of the user's files."""
    raw: dict[str, list[dict]] = {}
    if split_column:
        if not files.get("train"):
            raise UserDataError("task.split_column is set: give the one file as task.files.train")
        path = Path(files["train"])
        for n, row in enumerate(_rows(path), 1):
            split = str(row.get(split_column, ""))
            if split not in SPLITS:
                raise UserDataError(f"{path}, row {n}: {split_column} is {split!r}, not one of "
                                    f"{', '.join(SPLITS)}")
            raw.setdefault(split, []).append(row | {"_where": f"{path}, row {n}"})
    else:
        for split in SPLITS:
            if not files.get(split):
                raise UserDataError(f"task.files.{split} is not set; give a CSV or JSONL file for "
                                    f"each of train, validation and test (or task.split_column)")
            path = Path(files[split])
            raw[split] = [row | {"_where": f"{path}, row {n}"} for n, row in enumerate(_rows(path), 1)]
    missing = [s for s in SPLITS if not raw.get(s)]
    if missing:
        raise UserDataError(f"no {', '.join(missing)} examples in the user's files")
    labels = [row.get(label_column) for rows in raw.values() for row in rows]
    for rows in raw.values():
        for row in rows:
            for column in (text_column, label_column):
                if row.get(column) in (None, ""):
                    raise UserDataError(f"{row['_where']}: no {column!r} value (set "
                                        f"task.text_column / task.label_column to the file's column names)")
    as_int = all(isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit())
                 for v in labels)
    names = None if as_int else tuple(sorted({str(v) for v in labels}))
    index = {n: i for i, n in enumerate(names or ())}
    out = {}
    for split, rows in raw.items():
        examples = []
        for row in rows:
            label = int(row[label_column]) if as_int else index[str(row[label_column])]
            if label < 0:
                raise UserDataError(f"{row['_where']}: label {label} is negative")
            examples.append({"text": str(row[text_column]), "label": label})
        out[split] = examples
    if as_int:
        names = tuple(str(i) for i in range(max(int(v) for v in labels) + 1))
    return out, names
