"""Write the names imis-lite's text prompts were trained on (src/imis/models/weights/imis_lite_vocabulary.txt).

imis-lite was trained (every stage; see its model card) on the label names of btcv-demo's training
split, Colin27 + AAL without the held-out structures, the Brodmann areas and the MNI152 tissue classes
(grey matter, white matter, brain), each as IMIS-Net spells a text prompt (``prompt_name``). `imis
segment --text` warns about a name outside this list; `imis models --vocabulary imis-lite` prints it.

    PYTHONPATH=src python scripts/text_vocabulary.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from imis.data.brain_templates import TEMPLATES_DIR, heldout_aal_labels, read_aal_names
from imis.data.vocabulary import Vocabulary
from imis.io import read_image
from imis.models.text_vocabulary import VOCABULARY_FILES
from imis.prompts.text import prompt_name


def training_names(shared: Path) -> list[str]:
    meta = json.loads((shared / "data" / "btcv-demo" / "dataset.json").read_text())
    raw = [v for k, v in meta["labels"].items() if k != "0"]
    t = Path(TEMPLATES_DIR)
    aal = read_aal_names(t / "aal.nii.txt")
    held = heldout_aal_labels(aal)
    raw += [n for v, n in aal.items() if v not in held]
    brodmann = read_image(t / "brodmann.nii.gz").array
    raw += [f"Brodmann area {int(v)}" for v in np.unique(brodmann) if v != 0]
    raw += ["gray matter", "white matter", "brain"]
    vocab = Vocabulary.builtin()
    return sorted(dict.fromkeys(prompt_name(n, vocab) for n in raw))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    args = parser.parse_args()
    names = training_names(args.shared)
    out = VOCABULARY_FILES["imis-lite"]
    out.write_text("\n".join(names) + "\n", encoding="utf-8")
    print(f"{out}: {len(names)} names")


if __name__ == "__main__":
    main()
