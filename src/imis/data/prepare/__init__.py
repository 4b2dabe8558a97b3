"""`imis prepare` and `imis restack`: raw labelled volumes -> IMIS datasets (IMed-361M protocol) and back.

* :func:`prepare` (:mod:`.pipeline`) with :class:`PrepareConfig` (:mod:`.config`, from ``prepare.yaml``)
* :func:`restack` (:mod:`.restack`)
* building blocks: :mod:`.intensity` (CT windows, percentiles), :mod:`.slicing`, :mod:`.filters`
  (aspect ratio, small masks, connected components), :mod:`.split` (case-level split, leakage check),
  :mod:`.layout` (label values -> named one-hot channels), :mod:`.sources` (MSD/nnU-Net folders, case lists)
* :func:`register_prepare_commands` (:mod:`.commands`) adds both commands to the CLI
"""

from imis.data.prepare.commands import register_prepare_commands
from imis.data.prepare.config import CT_WINDOWS, PrepareConfig, load_config
from imis.data.prepare.pipeline import PrepareSummary, prepare
from imis.data.prepare.restack import RestackResult, restack, restack_to_file

__all__ = [
    "CT_WINDOWS",
    "PrepareConfig",
    "PrepareSummary",
    "RestackResult",
    "load_config",
    "prepare",
    "register_prepare_commands",
    "restack",
    "restack_to_file",
]
