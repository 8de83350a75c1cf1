"""The README's example runs, and its tables are what the committed result files say."""

import importlib.util
import pathlib
import re

ROOT = pathlib.Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def _block(name: str) -> str:
    m = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", README, re.S)
    assert m, f"README has no {name} block"
    return m.group(1)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_example_runs(capsys):
    code = re.search(r"```python\n(.*?)```", _block("example"), re.S).group(1)
    assert len(code.splitlines()) <= 45
    exec(compile(code, "README example", "exec"), {})
    assert "trainable numbers" in capsys.readouterr().out


def test_readme_train_save_reload_merge_example_runs(capsys):
    code = re.search(r"```python\n(.*?)```", _block("train-example"), re.S).group(1)
    exec(compile(code, "README train example", "exec"), {})
    assert "merged model gives the same logits: True" in capsys.readouterr().out


def test_readme_tables_come_from_result_files():
    render = _script("render_readme")
    for block in render.BLOCKS:
        assert _block(block) == render.rendered(block), (
            f"README {block} table differs from its result file: run python experiments/render_readme.py")
