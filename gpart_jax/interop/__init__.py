"""Interop with the reference implementation's PEFT adapters, bit-exact and without torch.

One module per job: ``config`` (the ``adapter_config.json`` schema), ``reference`` (reading and
writing the reference's adapter directory), ``matching`` (which modules it targets, in the
library's filters), ``architectures`` (torch's module order of known families), ``plan`` (the
reference's partition of a base), ``merge`` (applying it to PyTorch-named weights), ``flax``
(the same partition over flax params), ``convert`` (to and from the library's adapter files),
``safetensors_files`` (reading and writing files safely) and ``cli`` (``gpart-jax peft``).
"""

from gpart_jax.interop.config import GPartConfig
from gpart_jax.interop.convert import export_adapter, export_imported, import_adapter
from gpart_jax.interop.flax import FlaxPlan, check_reference_layout, plan_flax
from gpart_jax.interop.matching import is_targeted, target_filter
from gpart_jax.interop.merge import merge_file, merge_state_dict
from gpart_jax.interop.plan import ReferencePlan, plan_modules
from gpart_jax.interop.reference import (
    ReferenceAdapter,
    read_reference_adapter,
    write_reference_adapter,
)

__all__ = [
    "FlaxPlan", "GPartConfig", "ReferenceAdapter", "ReferencePlan", "check_reference_layout",
    "export_adapter", "export_imported", "import_adapter", "is_targeted", "merge_file",
    "merge_state_dict", "plan_flax", "plan_modules", "read_reference_adapter", "target_filter",
    "write_reference_adapter",
]
