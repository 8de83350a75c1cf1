"""README.md: every example block runs, and every result table is what its committed result file
renders.

An example is a fenced ``python`` block between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
markers whose NAME ends in ``example``; each runs as written, in a fresh namespace from the
repository root, on this session's 8 host devices (``tests/conftest.py``).
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- (?P<name>[\w.-]*example):start -->\n(?P<body>.*?)\n<!-- (?P=name):end -->", re.S)
CODE = re.compile(r"```python\n(.*?)```", re.S)


def examples(text: str) -> list[tuple[str, str]]:
    """``(block name, code)`` of every python block inside an example block of ``text``."""
    out = []
    for block in BLOCK.finditer(text):
        codes = CODE.findall(block.group("body"))
        out += [(block.group("name") + (f"[{i}]" if len(codes) > 1 else ""), code)
                for i, code in enumerate(codes)]
    return out


EXAMPLES = examples(README.read_text())


def test_examples_are_found_by_their_markers():
    text = ("<!-- example:start -->\n```python\nx = 1\n```\n<!-- example:end -->\n"
            "<!-- adapters-example:start -->\ntext\n```python\na = 1\n```\n```python\nb = 2\n```\n"
            "<!-- adapters-example:end -->\n"
            "<!-- bench:start -->\n```python\nnot an example\n```\n<!-- bench:end -->\n"
            "```python\noutside any block\n```\n")
    assert examples(text) == [("example", "x = 1\n"), ("adapters-example[0]", "a = 1\n"),
                              ("adapters-example[1]", "b = 2\n")]
    assert EXAMPLES, "README.md has no <!-- ...example:start --> block with python code"


@pytest.mark.parametrize(("name", "code"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_readme_example_runs(name, code, monkeypatch, tmp_path):
    import jax

    assert jax.device_count() == 8  # tests/conftest.py: examples see what a user's 8 devices give
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("GPART_JAX_CACHE", str(tmp_path / "cache"))  # nothing written to the user's cache
    exec(compile(code, f"README.md {name}", "exec"), {"__name__": "__main__"})


def test_readme_tables_are_what_the_result_files_render(monkeypatch, capsys):
    from experiments.analyses import render_readme

    monkeypatch.chdir(ROOT)  # render_readme reads README.md and the results relative to the root
    assert render_readme.differing(README.read_text()) == [], (
        "README tables differ from their result files: python -m experiments.analyses.render_readme")
    assert render_readme.main(["--check"]) == 0
    blocks = len(render_readme.BLOCKS)
    assert f"{blocks} of {blocks} README blocks agree" in capsys.readouterr().out
