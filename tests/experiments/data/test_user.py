"""experiments/data/user.py: a user's own labelled text in CSV or JSONL files, and the task reading
it (``task.dataset=files``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.data.sources import DataUnavailableError
from experiments.data.user import UserDataError, read_files


def _csv(path: Path, rows: list[tuple], header: str = "sentence,label") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")  # a blank last line is fine
    return path


def _three(tmp_path: Path, labels: tuple, suffix: str = ".csv") -> dict[str, str]:
    files = {}
    for k, split in enumerate(("train", "validation", "test")):
        path = tmp_path / f"{split}{suffix}"
        rows = [(f"{split} text {i}", labels[(i + k) % len(labels)]) for i in range(4)]
        if suffix == ".csv":
            _csv(path, rows)
        else:
            _jsonl(path, [{"sentence": t, "label": y} for t, y in rows])
        files[split] = str(path)
    return files


def test_csv_with_string_labels_numbers_them_in_sorted_order(tmp_path: Path) -> None:
    files = _three(tmp_path, ("pos", "neg", "neutral"))
    splits, names = read_files(files, "sentence", "label")
    assert names == ("neg", "neutral", "pos")
    assert splits["train"][:3] == [{"text": "train text 0", "label": 2},
                                   {"text": "train text 1", "label": 0},
                                   {"text": "train text 2", "label": 1}]
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [4, 4, 4]


def test_jsonl_with_integer_labels_keeps_them(tmp_path: Path) -> None:
    files = _three(tmp_path, (0, 3), suffix=".jsonl")
    splits, names = read_files(files, "sentence", "label")
    assert names == ("0", "1", "2", "3")  # the classes are 0 .. max
    assert [ex["label"] for ex in splits["validation"]] == [3, 0, 3, 0]
    # integers written as text (every CSV value) are integer labels too
    (tmp_path / "csv").mkdir()
    splits, names = read_files(_three(tmp_path / "csv", ("1", "0")), "sentence", "label")
    assert names == ("0", "1") and splits["train"][0]["label"] == 1


def test_one_file_with_a_split_column(tmp_path: Path) -> None:
    path = _csv(tmp_path / "all.csv", [("a", "x", "train"), ("b", "y", "validation"),
                                      ("c", "x", "test"), ("d", "y", "train")],
                header="sentence,label,part")
    splits, names = read_files({"train": str(path)}, "sentence", "label", split_column="part")
    assert names == ("x", "y")
    assert splits == {"train": [{"text": "a", "label": 0}, {"text": "d", "label": 1}],
                      "validation": [{"text": "b", "label": 1}], "test": [{"text": "c", "label": 0}]}
    with pytest.raises(UserDataError, match="give the one file as task.files.train"):
        read_files({"validation": str(path)}, "sentence", "label", split_column="part")


def test_errors_name_the_file_and_the_row(tmp_path: Path) -> None:
    files = _three(tmp_path, ("a", "b"))
    bad = _csv(tmp_path / "bad.csv", [("fine", "a"), ("no label", "")])
    with pytest.raises(UserDataError, match=rf"{bad}, row 2: no 'label' value"):
        read_files(files | {"validation": str(bad)}, "sentence", "label")
    with pytest.raises(UserDataError, match=r"train.csv, row 1: no 'text' value .*task.text_column"):
        read_files(files, "text", "label")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"sentence": "ok", "label": 1}\n{"sentence": "cut\n')
    with pytest.raises(UserDataError, match=rf"{broken}, line 2: not JSON"):
        read_files(files | {"test": str(broken)}, "sentence", "label")
    negative = _jsonl(tmp_path / "neg.jsonl", [{"sentence": "x", "label": 1}, {"sentence": "y", "label": -2}])
    with pytest.raises(UserDataError, match=rf"{negative}, row 2: label -2 is negative"):
        read_files(_three(tmp_path, (0, 1)) | {"test": str(negative)}, "sentence", "label")
    split_file = _csv(tmp_path / "s.csv", [("a", "x", "train"), ("b", "y", "dev")], "sentence,label,part")
    with pytest.raises(UserDataError, match=rf"{split_file}, row 2: part is 'dev', not one of train"):
        read_files({"train": str(split_file)}, "sentence", "label", split_column="part")


def test_missing_or_unusable_files(tmp_path: Path) -> None:
    files = _three(tmp_path, ("a", "b"))
    with pytest.raises(UserDataError, match="task.files.test is not set"):
        read_files(files | {"test": ""}, "sentence", "label")
    with pytest.raises(UserDataError, match=r"task.files: .*nope.csv does not exist"):
        read_files(files | {"train": str(tmp_path / "nope.csv")}, "sentence", "label")
    (tmp_path / "data.tsv").write_text("a\tb\n")
    with pytest.raises(UserDataError, match="is neither .csv nor .jsonl"):
        read_files(files | {"train": str(tmp_path / "data.tsv")}, "sentence", "label")
    only_train = _csv(tmp_path / "t.csv", [("a", "x", "train")], "sentence,label,part")
    with pytest.raises(UserDataError, match="no validation, test examples"):
        read_files({"train": str(only_train)}, "sentence", "label", split_column="part")
    assert issubclass(UserDataError, DataUnavailableError)  # the CLI prints it as one line


def test_task_reads_the_files_as_its_splits(tmp_path: Path) -> None:
    """``task.dataset=files``: the task's examples and classes come from the user's files, cut by
    ``task.<split>_examples`` like any dataset (no model is loaded for this)."""
    from experiments.config import load_config
    from experiments.tasks import check_dataset, examples, num_classes_of

    files = _three(tmp_path, ("neg", "pos", "mixed"), suffix=".jsonl")
    cfg = load_config("configs/minilm.py", [
        "--config.task.dataset=files", *(f"--config.task.files.{s}={p}" for s, p in files.items()),
        "--config.task.text_column=sentence", "--config.task.train_examples=3"])
    assert num_classes_of(cfg) == 3
    train = examples(cfg, "train")
    assert len(train) == 3 and {ex["text"] for ex in train} < {f"train text {i}" for i in range(4)}
    assert [ex["text"] for ex in examples(cfg, "test")] == [f"test text {i}" for i in range(4)]
    check_dataset("files", "text")
    from experiments.tasks import UsageError

    with pytest.raises(UsageError, match="needs a text classification model"):
        check_dataset("files", "image")
