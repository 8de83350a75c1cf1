"""The ``gpart-jax`` command: the library's own commands.

    gpart-jax info ADAPTER [--json]        what an adapter is: method, counts, adapted paths
    gpart-jax peft merge|import|export ... the reference's PEFT adapters (gpart_jax.interop.cli)

Training and evaluation are research code, run from a checkout: ``python -m experiments ...``.
"""

from __future__ import annotations

import json
import math
import sys

USAGE = __doc__.split("\n\n")[1]


def info(path: str, as_json: bool = False) -> int:
    """Print what the adapter at ``path`` holds; 2 with one line on stderr if it is unusable."""
    from gpart_jax.adapters import directory_size, read_manifest
    from gpart_jax.errors import AdapterError

    try:
        manifest = read_manifest(path)
        spec = manifest["method"]
        adapted = ([(e[0], tuple(e[1])) for e in spec["layout"]] if "layout" in spec
                   else [(p, tuple(s)) for p, s in spec.get("adapted", [])])
        out = {"method": spec.get("method"),
               "trainable": sum(math.prod(e["shape"]) for e in manifest["trainable"]),
               "saved": sum(math.prod(e["shape"]) for e in manifest["saved"]),
               "adapted_weights": sum(math.prod(s) for _, s in adapted),
               "size_on_disk_bytes": directory_size(path),
               "package_version": manifest.get("package_version"),
               "format_version": manifest.get("format_version")}
        out.update({k: spec[k] for k in ("d", "r", "seed", "scheme", "isometric", "scope",
                                         "fingerprint") if k in spec})
        out["saved_leaves"] = [e["path"] for e in manifest["saved"]]
        out["adapted"] = [[p, list(s)] for p, s in adapted]
    except (AdapterError, KeyError, TypeError, ValueError) as e:
        msg = str(e) if isinstance(e, AdapterError) else f"{path}: the manifest is incomplete ({e!r})"
        print(f"gpart-jax info: {msg}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(out, indent=1))
        return 0
    head = {k: v for k, v in out.items() if k not in ("adapted", "saved_leaves")}
    for k, v in head.items():
        print(f"{k}: {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k}: {v}")
    print(f"saved leaves ({len(out['saved_leaves'])}): {', '.join(out['saved_leaves']) or '-'}")
    print(f"adapted leaves ({len(out['adapted'])}):")
    for p, s in out["adapted"]:
        print(f"  {p}  {tuple(s)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + USAGE)
        return 0 if argv else 2
    command = argv[0]
    if command == "info":
        rest = [a for a in argv[1:] if a != "--json"]
        if len(rest) != 1:
            print("usage: gpart-jax info ADAPTER_DIR [--json]", file=sys.stderr)
            return 2
        return info(rest[0], "--json" in argv)
    if command == "peft":
        from gpart_jax.interop import cli as peft_cli

        return peft_cli.main(argv)
    if command in ("train", "eval", "merge", "params"):
        print(f"gpart-jax: {command!r} is an experiment command; run it from a checkout of the "
              f"repository: python -m experiments {command} ... (after bash experiments/install.sh)",
              file=sys.stderr)
        return 2
    print(f"gpart-jax: unknown command {command!r}; one of info, peft (see gpart-jax --help)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
