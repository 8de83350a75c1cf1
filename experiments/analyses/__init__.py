"""Analyses of the method and of finished runs, one module each, all with one command line.

    python -m experiments.analyses.cost               # measure; write results/cost.json, cost.png
    python -m experiments.analyses.cost --render      # print the README table from the JSON
    python -m experiments.analyses.cost --replot      # redraw the figure from the JSON
    python -m experiments.analyses.cost --rounds 2 --out /tmp/cost.json   # elsewhere: /tmp/cost.png

An analysis is ``measure(args) -> doc``, ``render(doc) -> str`` (the markdown table that
``render_readme`` puts in the README) and optionally ``plot(doc, path)``; ``run_analysis`` is its
``main``. The JSON goes to ``--out`` (default ``experiments/results/<name>.json``) through
``experiments.workdir.write_json`` and the figure beside it (``--out`` with ``.png``), so a run
with another ``--out`` leaves the committed files alone. ``--render`` and ``--replot`` read the
JSON at ``--out`` and measure nothing.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from experiments import workdir

RESULTS = pathlib.Path("experiments") / "results"  # relative to the repository root

Doc = dict[str, Any]


def default_out(name: str) -> pathlib.Path:
    """Where analysis ``name`` writes its JSON by default: ``experiments/results/<name>.json``."""
    return RESULTS / f"{name}.json"


def read_doc(path: pathlib.Path) -> Doc:
    """The JSON object at ``path``; ``SystemExit`` naming the file when it is missing."""
    doc = workdir.read_json(path)
    if doc is None:
        raise SystemExit(f"{path}: no readable JSON object (run from the repository root, or give "
                         f"--out)")
    return doc


def run_analysis(name: str, measure: Callable[[argparse.Namespace], Doc],
                 render: Callable[..., str], plot: Callable[[Doc, pathlib.Path], Any] | None = None,
                 *, description: str = "",
                 arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                 render_args: Callable[[argparse.Namespace], tuple] | None = None,
                 argv: Sequence[str] | None = None) -> int:
    """The command line of analysis ``name`` (module docstring); returns the exit code.

    ``measure(args)`` gets the parsed arguments: the analysis' own (``arguments`` adds them to
    the parser), ``out``, and ``command``, the command line as typed (for the JSON's
    ``"command"``). ``render_args(args)``: extra positional arguments of ``render`` (a subset of
    the table), default none.
    """
    parser = argparse.ArgumentParser(prog=f"python -m experiments.analyses.{name}",
                                     description=description.split("\n\n")[0] or None)
    parser.add_argument("--out", type=pathlib.Path, default=default_out(name),
                        help="the JSON to write (or to read with --render, --replot); the figure "
                             "goes beside it (default %(default)s)")
    parser.add_argument("--render", action="store_true",
                        help="print the README table from the JSON at --out; measure nothing")
    if plot is not None:
        parser.add_argument("--replot", action="store_true",
                            help="redraw the figure from the JSON at --out; measure nothing")
    if arguments is not None:
        arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command = " ".join([parser.prog, *argv])
    extra = render_args(args) if render_args is not None else ()
    figure = args.out.with_suffix(".png")
    if args.render:
        print(render(read_doc(args.out), *extra))
        return 0
    if getattr(args, "replot", False):
        plot(read_doc(args.out), figure)
        print(f"wrote {figure}", file=sys.stderr)
        return 0
    doc = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    workdir.write_json(args.out, doc)
    written = [args.out]
    if plot is not None and plot(doc, figure) is not False:
        written.append(figure)
    print(render(doc, *extra))
    print(f"wrote {', '.join(map(str, written))}", file=sys.stderr)
    return 0

