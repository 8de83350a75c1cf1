"""experiments/analyses/__init__.py: ``run_analysis``, the one command line of every analysis
(measure and write the JSON and figure, or ``--render`` / ``--replot`` from the JSON)."""

from __future__ import annotations

import json
import pathlib

import pytest

from experiments.analyses import RESULTS, default_out, read_doc, run_analysis


def _toy(calls: list):
    def measure(args):
        calls.append(("measure", args.scale, args.command))
        return {"command": args.command, "value": 2 * args.scale}

    def render(doc, unit=""):
        return f"| value |\n|---|\n| {doc['value']}{unit} |"

    def plot(doc, path):
        calls.append(("plot", path.name))
        path.write_bytes(b"png")

    def arguments(parser):
        parser.add_argument("--scale", type=int, default=3)
        parser.add_argument("--unit", default="")

    return measure, render, plot, arguments


def test_measure_writes_json_and_figure_beside_it(tmp_path, capsys):
    calls: list = []
    measure, render, plot, arguments = _toy(calls)
    out = tmp_path / "sub" / "toy.json"
    argv = ["--scale", "5", "--out", str(out)]
    assert run_analysis("toy", measure, render, plot, arguments=arguments, argv=argv) == 0
    assert calls == [("measure", 5, "python -m experiments.analyses.toy --scale 5 --out " + str(out)),
                     ("plot", "toy.png")]
    assert json.loads(out.read_text())["value"] == 10
    assert (tmp_path / "sub" / "toy.png").read_bytes() == b"png"
    captured = capsys.readouterr()
    assert captured.out.strip() == "| value |\n|---|\n| 10 |" and f"wrote {out}" in captured.err


def test_render_and_replot_read_the_json_and_measure_nothing(tmp_path, capsys):
    calls: list = []
    measure, render, plot, arguments = _toy(calls)
    out = tmp_path / "toy.json"
    out.write_text(json.dumps({"value": 7}))
    assert run_analysis("toy", measure, render, plot, arguments=arguments,
                        render_args=lambda args: (args.unit,),
                        argv=["--render", "--out", str(out), "--unit", " s"]) == 0
    assert capsys.readouterr().out.strip() == "| value |\n|---|\n| 7 s |"
    assert run_analysis("toy", measure, render, plot, arguments=arguments,
                        argv=["--replot", "--out", str(out)]) == 0
    assert calls == [("plot", "toy.png")]
    with pytest.raises(SystemExit, match=r"missing.json: no readable JSON object"):
        run_analysis("toy", measure, render, plot, arguments=arguments,
                     argv=["--render", "--out", str(tmp_path / "missing.json")])


def test_without_a_figure_there_is_no_replot(tmp_path, capsys):
    calls: list = []
    measure, render, _, arguments = _toy(calls)
    with pytest.raises(SystemExit):
        run_analysis("toy", measure, render, None, arguments=arguments, argv=["--replot"])
    assert "unrecognized arguments: --replot" in capsys.readouterr().err
    assert run_analysis("toy", measure, render, None, arguments=arguments,
                        argv=["--out", str(tmp_path / "t.json")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def test_default_out_is_the_committed_results():
    assert default_out("cost") == RESULTS / "cost.json" == pathlib.Path("experiments/results/cost.json")
    root = pathlib.Path(__file__).resolve().parents[3]
    assert read_doc(root / "experiments" / "results" / "cost.json")["methods"]
