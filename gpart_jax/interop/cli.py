"""Command line for interop with the reference implementation's PEFT adapters.

    gpart-jax peft merge  --adapter DIR --base model.safetensors --out merged.safetensors
                          [--prefix bert.] [--module-order auto|bert|roberta|llama|vit|FILE]
        Apply a reference GPart adapter to a PyTorch-named checkpoint ((out, in) weights) and
        write the merged checkpoint, saved modules (e.g. the classifier) included.
    gpart-jax peft import --adapter DIR --base model.safetensors --out GPART_DIR
                          [--prefix ...] [--module-order ...] [--overwrite]
        Write the adapter as gpart-jax files planned on the base's shapes: gpart_adapter.json
        (config, targeted modules with shapes in global order, layout, blocks, fingerprint),
        theta.npy and saved.safetensors. (Import into the project's flax models is the Python
        function ``gpart_jax.interop.peft.plan_flax``.)
    gpart-jax peft export --gpart GPART_DIR --out ADAPTER_DIR [--overwrite]
        Write gpart-jax files (as ``import`` writes them) back as a PEFT adapter directory.
        (Adapters trained on flax params are exported with ``peft.export_adapter``.)

``--prefix`` is what PEFT's base model prepends to the checkpoint's names ("bert." for a
``BertModel`` checkpoint adapted as ``BertForSequenceClassification``); regex targets and saved
module names see it. ``--module-order`` gives the reference's module order (torch
``named_modules()``) when the architecture is not detected: an architecture name, or a text
file with one module name per line. Everything is validated before anything is written, and
outputs are written through temporary files: on error nothing is left behind. Exit status 0 on
success, 2 on a usage error or a refused input (the message says why and what to do).

``main`` is the entry point; the ``gpart-jax`` console script dispatches ``peft ...`` to it.
Also runnable as ``python -m gpart_jax.interop.cli peft ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpart_jax.interop import peft
from gpart_jax.interop.architectures import ARCHITECTURES


def _module_order(value: str) -> peft.ModuleOrder:
    if value == "auto" or value in ARCHITECTURES:
        return value
    path = Path(value)
    if not path.is_file():
        raise peft.InteropError(f"--module-order {value!r} is neither 'auto', an architecture "
                                f"({', '.join(sorted(ARCHITECTURES))}) nor a file of module names")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise peft.InteropError(f"--module-order file {path} lists no module names")
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpart-jax", description="gpart-jax command line")
    top = parser.add_subparsers(dest="group", required=True)
    peft_parser = top.add_parser("peft", help="read, merge and write the reference's PEFT adapters")
    sub = peft_parser.add_subparsers(dest="command", required=True)

    def planning(p):
        p.add_argument("--adapter", required=True, help="reference adapter directory")
        p.add_argument("--base", required=True, help="base checkpoint (.safetensors, torch names)")
        p.add_argument("--prefix", default="", help="PEFT's base-model prefix of the names, e.g. 'bert.'")
        p.add_argument("--module-order", default="auto",
                       help="auto, an architecture name, or a file of module names in order")

    merge = sub.add_parser("merge", help="apply an adapter to a checkpoint")
    planning(merge)
    merge.add_argument("--out", required=True, help="merged checkpoint to write (.safetensors)")

    imp = sub.add_parser("import", help="write an adapter as gpart-jax files")
    planning(imp)
    imp.add_argument("--out", required=True, help="directory for the gpart-jax files")
    imp.add_argument("--overwrite", action="store_true", help="replace files in a non-empty --out")

    exp = sub.add_parser("export", help="write gpart-jax files as a PEFT adapter directory")
    exp.add_argument("--gpart", required=True, help="directory written by 'peft import'")
    exp.add_argument("--out", required=True, help="adapter directory to write")
    exp.add_argument("--overwrite", action="store_true", help="replace files in a non-empty --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``gpart-jax peft merge|import|export`` with ``argv`` (default ``sys.argv[1:]``).

    Returns the exit status: 0 on success, 2 on a usage error or a refused input.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help and on usage errors
        return int(e.code or 0)
    try:
        if args.command == "merge":
            out = peft.merge_file(args.adapter, args.base, args.out,
                                  module_order=_module_order(args.module_order), prefix=args.prefix)
            print(f"wrote {out}")
        elif args.command == "import":
            out = peft.import_to_dir(args.adapter, args.base, args.out,
                                     module_order=_module_order(args.module_order),
                                     prefix=args.prefix, overwrite=args.overwrite)
            print(f"wrote {out}")
        else:
            out = peft.export_from_dir(args.gpart, args.out, overwrite=args.overwrite)
            print(f"wrote {out}")
    except (peft.InteropError, OSError) as e:
        print(f"gpart-jax peft {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
