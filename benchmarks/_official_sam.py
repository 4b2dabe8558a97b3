"""Load the official Segment Anything modules for side-by-side benchmarks, without torchvision.

The `segment-anything` package's `__init__` imports torchvision (through its predictor's resize
helpers and the automatic mask generator's NMS), which does not import beside the CPU torch wheel.
We register the package as a bare namespace (its `__init__` is not run) so that `modeling` and
`predictor` load from their own files; the two torchvision functions the predictor imports are
stubbed and never called on the benchmarked path (prompts and masks only; images are pre-encoded).
Install it in a benchmark environment with `pip install --no-deps segment-anything==1.0`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path


def official_sam():
    """Return the official `segment_anything` namespace with `.modeling` and `.predictor` loaded."""
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the official segment-anything package is needed for this benchmark: "
            "pip install --no-deps segment-anything==1.0"
        )
    root = Path(list(spec.submodule_search_locations)[0])
    if "segment_anything" not in sys.modules or not hasattr(sys.modules["segment_anything"], "__imis_bare__"):
        pkg = types.ModuleType("segment_anything")
        pkg.__path__ = [str(root)]
        pkg.__imis_bare__ = True
        sys.modules["segment_anything"] = pkg
        if importlib.util.find_spec("torchvision") is None:
            _stub_torchvision()
    pkg = sys.modules["segment_anything"]
    pkg.modeling = importlib.import_module("segment_anything.modeling")
    pkg.predictor = importlib.import_module("segment_anything.predictor")
    return pkg


def _stub_torchvision() -> None:
    def unavailable(*_a, **_k):
        raise RuntimeError("torchvision stub: image resizing is not part of this benchmark")

    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")
    fn = types.ModuleType("torchvision.transforms.functional")
    fn.resize = unavailable
    fn.to_pil_image = unavailable
    tv.transforms = tr
    tr.functional = fn
    sys.modules.update(
        {"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn}
    )
