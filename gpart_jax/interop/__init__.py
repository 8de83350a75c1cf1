"""Interop with other implementations of GPart: the reference's PEFT adapters (``peft``)."""

from gpart_jax.interop.peft import (
    FlaxPlan,
    GPartConfig,
    InteropError,
    ReferenceAdapter,
    ReferencePlan,
    check_reference_layout,
    export_adapter,
    load_adapter,
    merge_file,
    merge_state_dict,
    plan_flax,
    plan_modules,
    save_adapter,
)

__all__ = [
    "FlaxPlan",
    "GPartConfig",
    "InteropError",
    "ReferenceAdapter",
    "ReferencePlan",
    "check_reference_layout",
    "export_adapter",
    "load_adapter",
    "merge_file",
    "merge_state_dict",
    "plan_flax",
    "plan_modules",
    "save_adapter",
]
