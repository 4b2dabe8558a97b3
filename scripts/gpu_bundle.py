"""Pack `imis train` runs for a lent GPU, whose working tree travels in 64 MiB, and write the command to run.

    PYTHONPATH=src python scripts/gpu_bundle.py \
        configs/imis-lite/experiments/synthetic.yaml configs/imis-lite/experiments/paper-mix-gpu.yaml \
        --time-limit 420
    # then, with the device tool, from the repository root:
    #   run(command="bash .gpu/run.sh", carry=[".gpu"], timeout_s=540); give_back()
    # the same here, to check it: OUT=/tmp/gpu-out PYTHON=.venv/bin/python bash .gpu/run.sh

What goes into ``.gpu/`` (added to .git/info/exclude, so git ignores it and only ``carry`` sends it):

* ``data/<dataset>-<digest>/``: only the images an entry of a config reads (its split, cases,
  exclude_cases, every and max_images applied, as `imis train` selects them), with their labels and
  imasks; RGB PNGs whose three channels are equal are re-encoded as grey PNGs (the same pixels for
  the reader, a third of the bytes); a ``dataset.json`` listing just those. Entries that select the same
  images share one folder.
* ``labels.npz``: the brain label maps of ``kind: synthetic`` (imis.data.synthetic.write_brain_cache):
  the lent machine has no mricron-data, nilearn or NIfTI reader.
* ``cache/text/minilm.pt``: MiniLM features of every target name the runs will see, computed here by
  loading each rewritten config's data once (which also proves the bundle loads): 88 MB of MiniLM
  weights do not travel.
* ``configs/<name>.yaml``: each config with its paths pointing into ``.gpu``, ``out: runs/gpu/<name>``
  and ``embedding_cache: .gpu/cache``; ``init`` files other than registry names are copied too.
* ``run.sh``: every config trained side by side (``--time-limit``), then each run's ``best.pt`` (else
  ``model.pt``), ``best.json`` and logs packed into ``$OUT/<name>.tar`` split into parts under the
  tool's 16 MB per file (``cat <name>.tar.* > <name>.tar`` to join).

Prints the bundle's size and the whole working tree's that would travel; exit 1 over ``--budget-mb``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / ".gpu"


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def copy_selection(spec, data_dir: Path) -> Path:
    """The images ``spec`` reads, copied (grey where they are) into a folder of their own; returns it."""
    from imis.train.data import select_entries

    _, entries = select_entries(spec)
    stems = sorted(Path(e.image).stem for e in entries)
    digest = hashlib.sha1("\n".join([spec.path, *stems]).encode()).hexdigest()[:8]
    out = data_dir / f"{Path(spec.path).name}-{digest}"
    if (out / "dataset.json").is_file():
        return out
    from imis.data.formats.imed import imask_path
    from imis.errors import InputError

    src = Path(spec.path)
    for e in entries:  # the reader's paths: an imask is found by name (.npy, or btcv-demo's .npz)
        files = [Path(e.image), Path(e.label)]
        if e.imask is not None:
            try:
                files.append(imask_path(e.imask))
            except InputError:
                pass  # an image without its imask trains on its ground truth, there as here
        for f in files:
            _copy_file(f, out / f.relative_to(src))
    meta = json.loads((src / "dataset.json").read_text(encoding="utf-8"))
    keep = set(stems)
    for key in ("training", "test"):
        meta[key] = [e for e in meta.get(key, []) if Path(e["image"]).stem in keep]
    meta["numTraining"], meta["numTest"] = len(meta["training"]), len(meta["test"])
    (out / "dataset.json").write_text(json.dumps(meta, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix.lower() == ".png":
        with Image.open(src) as im:
            a = np.asarray(im)
        if (
            a.ndim == 3
            and a.shape[2] == 3
            and (a[..., 0] == a[..., 1]).all()
            and (a[..., 1] == a[..., 2]).all()
        ):
            Image.fromarray(np.ascontiguousarray(a[..., 0])).save(dst, compress_level=9)
            return
    shutil.copyfile(src, dst)


def rewrite_config(path: Path, bundle: Path, labels: Path, runs: Path) -> tuple[str, Path]:
    """The config at ``path`` rewritten to read from the bundle; returns (name, new config path)."""
    from imis.train.config import DatasetSpec, load_train_config

    cfg = load_train_config(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    name = path.stem
    cfg_dir = bundle / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    for key in ("datasets", "val_datasets"):
        entries = []
        for raw_entry, spec in zip(raw.get(key) or [], getattr(cfg, key), strict=True):
            entry = dict(raw_entry) if isinstance(raw_entry, dict) else {"path": raw_entry}
            if spec.kind == "synthetic":
                btcv = DatasetSpec(path=spec.btcv, split="train", exclude_cases=spec.exclude_cases)
                entry["btcv"] = _rel(copy_selection(btcv, bundle / "data"), cfg_dir)
                entry["label_cache"] = _rel(labels, cfg_dir)
                entry["path"] = _rel(runs / name / "synthetic", cfg_dir)
                entry.pop("exclude_cases", None)  # already left out of the bundled folder
            else:
                entry["path"] = _rel(copy_selection(spec, bundle / "data"), cfg_dir)
                for applied in ("cases", "exclude_cases", "every", "max_images"):
                    entry.pop(applied, None)
            entries.append(entry)
        if key in raw:
            raw[key] = entries
    init = cfg.model.init
    if init and Path(init).is_file():
        dst = bundle / "init" / f"{name}.pt"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(init, dst)
        raw["model"]["init"] = _rel(dst, cfg_dir)
    raw["out"] = _rel(runs / name, cfg_dir)
    raw["embedding_cache"] = _rel(bundle / "cache", cfg_dir)
    out = cfg_dir / f"{name}.yaml"
    out.write_text(f"# {path.name} packed by scripts/gpu_bundle.py\n" + yaml.safe_dump(raw, sort_keys=False))
    return name, out


def warm_text_cache(config: Path) -> int:
    """Load the rewritten config's data here once (the bundle's own check) and fill the text cache."""
    import torch

    from imis.train.config import load_train_config
    from imis.train.network import build_network
    from imis.train.trainer import _cache_dir, _load_data

    cfg = load_train_config(config)
    net, pre, _ = build_network(cfg)
    data = _load_data(cfg, net, pre, torch.device("cpu"), _cache_dir(cfg, Path(cfg.out)))
    return len(data.name_index)


RUN_SH = """#!/bin/bash
# made by scripts/gpu_bundle.py: train {names} side by side on the lent GPU (run from the repository root)
set -u
export PYTHONPATH=src${{PYTHONPATH:+:$PYTHONPATH}} PYTHONUNBUFFERED=1
OUT=${{OUT:-.gpu/out}}
PYTHON=${{PYTHON:-python3}}  # the lent machine's python3 holds PyTorch; PYTHON=.venv/bin/python tries it here
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
pids=()
for c in .gpu/configs/*.yaml; do
  n=$(basename "$c" .yaml)
  "$PYTHON" -m imis.cli train --config "$c" --time-limit {time_limit} --quiet > "$OUT/$n.log" 2>&1 &
  pids+=($!)
done
for p in "${{pids[@]}}"; do wait "$p"; done
for d in runs/gpu/*/; do
  n=$(basename "$d")
  # best.pt when a validation chose one, else the last model: one of them travels back
  model=best.pt; [ -f "$d$model" ] || model=model.pt
  files=()
  for f in "$model" best.json val_log.csv train_log.csv summary.json; do
    [ -f "$d$f" ] && files+=("$f")
  done
  [ ${{#files[@]}} -gt 0 ] || continue
  tar -cf "$OUT/$n.tar" -C "$d" "${{files[@]}}" && split -b 15m -d "$OUT/$n.tar" "$OUT/$n.tar." && rm "$OUT/$n.tar"
done
tail -n 4 "$OUT"/*.log
ls -la "$OUT"
"""


def tree_bytes() -> int:
    """Bytes of what travels besides the bundle: tracked and untracked files git does not ignore."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+", type=Path, help="imis train configs (YAML)")
    ap.add_argument("--time-limit", type=int, default=420, help="seconds of training per run (default 420)")
    ap.add_argument("--budget-mb", type=float, default=64.0, help="what may travel, MiB (default 64)")
    ap.add_argument("--out", type=Path, default=BUNDLE, help="bundle folder (default .gpu in the repository)")
    args = ap.parse_args(argv)
    from imis.data.synthetic import LabelMaps, write_brain_cache

    bundle = args.out.resolve()
    inside = bundle.is_relative_to(ROOT)
    if inside:
        exclude = ROOT / ".git" / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        line = f"/{bundle.relative_to(ROOT).as_posix()}/"
        if line not in (exclude.read_text() if exclude.is_file() else ""):
            with open(exclude, "a") as f:
                f.write(line + "\n")
    if bundle.exists():
        shutil.rmtree(bundle)
    labels = write_brain_cache(LabelMaps(ROOT), bundle / "labels.npz")  # btcv is not read for the brain maps
    runs = ROOT / "runs" / "gpu" if inside else bundle / "runs"
    names = []
    for path in args.configs:
        name, new = rewrite_config(path.resolve(), bundle, labels, runs)
        n_names = warm_text_cache(new)
        print(f"{name}: {new} loads; {n_names} target names in the text cache", flush=True)
        names.append(name)
    run = bundle / "run.sh"
    cfg_glob = _rel(bundle / "configs", ROOT) if inside else str(bundle / "configs")
    text = RUN_SH.format(names=", ".join(names), time_limit=args.time_limit)
    run.write_text(text.replace(".gpu/configs", cfg_glob).replace("runs/gpu", _rel(runs, ROOT)))
    run.chmod(0o755)
    for p in bundle.rglob("*"):  # what the local check wrote that must not travel
        if p.is_dir() and p.name == "embeddings":
            shutil.rmtree(p, ignore_errors=True)
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    total = size + (tree_bytes() if inside else 0)
    print(
        f"bundle {size / 2**20:.1f} MiB; with the working tree {total / 2**20:.1f} MiB of {args.budget_mb:g}"
    )
    if total > args.budget_mb * 2**20:
        print(
            "over the budget: drop an entry, raise 'every', or pack the configs in two calls", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
