"""``gpart-jax peft``: the reference implementation's PEFT adapters from the command line.

    gpart-jax peft merge  --adapter DIR --base model.safetensors --out merged.safetensors
                          [--prefix bert.] [--module-order auto|bert|roberta|llama|vit|FILE]
                          [--overwrite]
        Apply a reference GPart adapter to a PyTorch-named checkpoint ((out, in) weights) and
        write the merged checkpoint, saved modules (e.g. the classifier) included.
    gpart-jax peft import --adapter DIR --base model.safetensors --out ADAPTER_DIR
                          [--prefix ...] [--module-order ...] [--overwrite]
        Write the reference adapter as a gpart-jax adapter (``gpart_jax.load_adapter`` and
        ``gpart-jax info`` read it), planned on the base's shapes, which it records.
    gpart-jax peft export --adapter ADAPTER_DIR --out DIR [--overwrite]
        Write a gpart-jax adapter made by ``peft import`` back as a PEFT adapter directory.
        (Adapters trained on flax params: ``gpart_jax.interop.export_adapter``.)

``--prefix`` is what PEFT's base model prepends to the checkpoint's names ("bert." for a
``BertModel`` checkpoint adapted as ``BertForSequenceClassification``); regex targets and saved
module names see it. ``--module-order`` gives the reference's module order (torch
``named_modules()``) when the architecture is not detected: an architecture name, or a text
file with one module name per line. Everything is validated before anything is written; an
existing output is replaced only with ``--overwrite``, never when it is an input, and always
through a temporary sibling. Exit status 0 on success, 2 on a usage error or a refused input
(one line on stderr says why and what to do).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpart_jax.errors import AdapterError, InteropError, LayoutMismatchError
from gpart_jax.interop.architectures import ARCHITECTURES
from gpart_jax.interop.config import ModuleOrder
from gpart_jax.interop.convert import export_imported, import_adapter
from gpart_jax.interop.merge import merge_file


def _module_order(value: str) -> ModuleOrder:
    if value == "auto" or value in ARCHITECTURES:
        return value
    path = Path(value)
    if not path.is_file():
        raise InteropError(f"--module-order {value!r} is neither 'auto', an architecture "
                           f"({', '.join(sorted(ARCHITECTURES))}) nor a file of module names")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise InteropError(f"--module-order file {path} lists no module names")
    return names


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2, as every other refused input
        raise InteropError(f"{message} (see gpart-jax peft --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpart-jax", description="gpart-jax command line")
    top = parser.add_subparsers(dest="group", required=True, parser_class=_Parser)
    peft_parser = top.add_parser("peft", help="read, merge and write the reference's PEFT adapters")
    sub = peft_parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def planning(p):
        p.add_argument("--adapter", required=True, help="reference adapter directory")
        p.add_argument("--base", required=True, help="base checkpoint (.safetensors, torch names)")
        p.add_argument("--prefix", default="", help="PEFT's base-model prefix of the names, e.g. 'bert.'")
        p.add_argument("--module-order", default="auto",
                       help="auto, an architecture name, or a file of module names in order")
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    merge = sub.add_parser("merge", help="apply an adapter to a checkpoint")
    planning(merge)
    merge.add_argument("--out", required=True, help="merged checkpoint to write (.safetensors)")
    imp = sub.add_parser("import", help="write an adapter as a gpart-jax adapter")
    planning(imp)
    imp.add_argument("--out", required=True, help="gpart-jax adapter directory to write")
    exp = sub.add_parser("export", help="write a gpart-jax adapter as a PEFT adapter directory")
    exp.add_argument("--adapter", required=True, help="gpart-jax adapter made by 'peft import'")
    exp.add_argument("--out", required=True, help="PEFT adapter directory to write")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``gpart-jax peft merge|import|export`` with ``argv`` (default ``sys.argv[1:]``).

    Returns the exit status: 0 on success, 2 on a usage error or a refused input.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[1] if len(argv) > 1 else "?"
    try:
        args = _parser().parse_args(argv)
        if args.command == "merge":
            out = merge_file(args.adapter, args.base, args.out, prefix=args.prefix,
                             module_order=_module_order(args.module_order),
                             overwrite=args.overwrite)
        elif args.command == "import":
            out = import_adapter(args.adapter, args.base, args.out, prefix=args.prefix,
                                 module_order=_module_order(args.module_order),
                                 overwrite=args.overwrite)
        else:
            out = export_imported(args.adapter, args.out, overwrite=args.overwrite)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except (InteropError, AdapterError, LayoutMismatchError) as e:
        print(f"gpart-jax peft {command}: {str(e).strip()}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"gpart-jax peft {command}: {e.strerror or e} ({e.filename or ''})", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
