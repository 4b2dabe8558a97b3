"""What a benchmark run runs (:class:`BenchConfig`), checked before anything is loaded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imis.bench.protocols import CLICK_SIMULATORS, FIRST_CLICKS, PROTOCOLS
from imis.data.perturb import PERTURBATIONS
from imis.errors import InputError
from imis.models.interactive import PromptableModel


@dataclass
class BenchConfig:
    """What to run. ``data``: an IMed-361M dataset folder; ``split``: its entry list (``test``/``train``);
    ``cases``: only the images of these cases (the case of ``ABD_035_120`` is ``ABD_035``), e.g. a
    validation split of training cases held out of a training run; ``limit_images``: only the first N
    images of the split (sorted by name), for quick runs;
    ``prompts_file``: a prompt file to replay instead of generating one (it must have been made for this
    data: see :func:`imis.bench.inputs.run_prompts`); ``perturb``: an intensity remap of every image before
    the model sees it (:data:`imis.data.perturb.PERTURBATIONS`, seeded by ``seed`` and the image id; the
    masks and prompts are those of the unperturbed data)."""

    models: tuple[str, ...]
    data: Path
    split: str = "test"
    protocol: str = "single"
    seed: int = 0
    max_interactions: int = 9
    click_simulator: str = "ritm"
    first_click: str = "center"
    nsd_tolerance_mm: float = 2.0
    noc_cap: int = 20
    cases: tuple[str, ...] = ()
    limit_images: int | None = None
    device: str = "cpu"
    prompts_file: Path | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)  # model name -> weight file (--checkpoint)
    backend: str = "torch"  # torch | onnx | auto (imis.models.onnx.backend.resolve_runtime)
    precision: str = "fp32"  # fp32 | bf16 | int8 | auto
    perturb: str | None = None
    # zoom-in refinement of the learned models from this interaction on; 0: off (imis.models.zoom)
    zoom: int = 0
    model_loader: Callable[[str], PromptableModel] | None = field(default=None, compare=False, repr=False)

    def validate(self) -> None:
        if not self.models:
            raise InputError("no model given: pass --models NAME[,NAME...]")
        if len(set(self.models)) != len(self.models):
            raise InputError(f"a model is named twice in {list(self.models)}")
        if self.protocol not in PROTOCOLS:
            raise InputError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}")
        if self.click_simulator not in CLICK_SIMULATORS:
            raise InputError(
                f"click simulator must be one of {', '.join(CLICK_SIMULATORS)}, not {self.click_simulator!r}"
            )
        if self.first_click not in FIRST_CLICKS:
            raise InputError(
                f"first click must be one of {', '.join(FIRST_CLICKS)}, not {self.first_click!r}"
            )
        if self.max_interactions < 1 or self.noc_cap < 1:
            raise InputError("max interactions and the NoC cap must be at least 1")
        if self.limit_images is not None and self.limit_images < 1:
            raise InputError(f"--limit-images must be at least 1, got {self.limit_images}")
        if self.perturb is not None and self.perturb not in PERTURBATIONS:
            raise InputError(f"--perturb must be one of {', '.join(PERTURBATIONS)}, not {self.perturb!r}")
        if self.seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {self.seed}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("model_loader")
        d["models"] = list(self.models)
        d["cases"] = list(self.cases)
        d["data"] = str(self.data)
        d["prompts_file"] = None if self.prompts_file is None else str(self.prompts_file)
        return d
