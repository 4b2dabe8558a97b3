"""`imis prepare` and `imis restack`: raw labelled volumes -> IMIS datasets (IMed-361M protocol) and back.

* :func:`prepare` (:mod:`.pipeline`) with :class:`PrepareConfig` (:mod:`.config`, from ``prepare.yaml``);
  its parts: :mod:`.case` (the work unit: one case), :mod:`.channels` (a label slice -> one-hot channels
  and files), :mod:`.executors` (serial, process pool, Ray), :mod:`.folder` (the output folder: lock,
  settings, done-markers), :mod:`.finalize` (split, leakage, dataset.json, manifest, summary)
* :func:`restack` (:mod:`.restack`)
* building blocks: :mod:`.intensity` (CT windows, percentiles), :mod:`.slicing`, :mod:`.filters`
  (aspect ratio, small masks, connected components), :mod:`.split` (case-level split, leakage check),
  :mod:`.layout` (label values -> named one-hot channels), :mod:`.sources` (MSD/nnU-Net folders, case lists)
* :mod:`.commands` adds both commands to the CLI (imported by :mod:`imis.cli` only: it needs
  :mod:`imis.data.brain_templates`, which uses this package)
"""

from imis.data.prepare.config import CT_WINDOWS, PrepareConfig, load_config
from imis.data.prepare.finalize import PrepareSummary
from imis.data.prepare.pipeline import prepare
from imis.data.prepare.restack import RestackResult, restack, restack_to_file

__all__ = [
    "CT_WINDOWS",
    "PrepareConfig",
    "PrepareSummary",
    "RestackResult",
    "load_config",
    "prepare",
    "restack",
    "restack_to_file",
]
