"""`imis automask` on copies of real btcv-demo slices: the files, the readers, resume, bad inputs, executors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SLICES, copy_dataset

from imis.automask.run import run_automask
from imis.automask.settings import AutomaskSettings
from imis.cli import main
from imis.data.formats import imed

# a 3 x 3 grid with a low IoU threshold: real masks from 9 clicks, cheap enough for a test
FAST = [
    "--points-per-side",
    "3",
    "--iou-thresh",
    "0.3",
    "--stability",
    "0",
    "--no-progress",
    "--threads",
    "1",
]
SETTINGS = AutomaskSettings(points_per_side=3, iou_thresh=0.3, stability_thresh=0.0)
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _files(root: Path) -> dict[str, bytes]:
    out = {}
    for sub in ("imask", "automask/records"):
        for p in sorted((root / sub).iterdir()):
            out[f"{sub}/{p.name}"] = p.read_bytes()
    out["dataset.json"] = (root / "dataset.json").read_bytes()
    return out


@pytest.fixture(scope="module")
def reference(btcv_dir, tmp_path_factory, lite):
    root = copy_dataset(btcv_dir, tmp_path_factory.mktemp("ref"))
    assert main(["automask", str(root), *FAST]) == 0
    return root


def test_writes_the_released_format_read_by_every_reader(reference, capsys):
    ds = imed.read_dataset(reference)
    assert [e.imask.name for e in ds.entries] == [f"x___{s}.npy" for s in SLICES]
    for e in ds.entries:
        raw = np.load(e.imask)
        assert raw.dtype == np.int64 and raw.shape == (512, 512, 1)
        ids = imed.read_imask(e.imask)
        assert np.unique(ids[ids > 0]).tolist() == list(range(1, ids.max() + 1))
        rec = json.loads((reference / "automask" / "records" / f"{e.stem}.json").read_text())
        assert [i["id"] for i in rec["ids"]] == list(range(1, ids.max() + 1))
        assert {i["source"] for i in rec["ids"]} <= {"model", "gt"}
        for i in rec["ids"]:
            assert i["area"] == int((ids == i["id"]).sum())
            if i["source"] == "model":
                assert i["pred_iou"] >= 0.3 and len(i["point"]) == 2
            else:
                assert i["gt_label"] in ds.labels.values()
        sample = imed.read_sample(ds, e)  # the reader imis train and imis bench use
        np.testing.assert_array_equal(sample.imask, ids)
    from imis.data.stats import iter_records

    _, _, n, records = iter_records(reference)  # imis stats
    recs = list(records)
    assert n == 2 and all(r.imask_areas is not None and len(r.imask_areas) >= 1 for r in recs)
    from imis.models.preprocess import Preprocess
    from imis.train.config import DatasetSpec
    from imis.train.data import load_images

    # imis train draws targets from the generated maps as from the released ones
    spec = DatasetSpec(str(reference), split="test", imask=True)
    images = load_images(spec, Preprocess(256), 64, clean_imasks=False)
    assert [i.stem for i in images] == list(SLICES)
    for i, e in zip(images, ds.entries, strict=True):
        # the released reference (and so imis train) treats id 0 as one more region
        assert 1 <= len(i.imask) <= imed.read_imask(e.imask).max() + 1
        assert all(t.source == "imask" for t in i.imask)


def test_rerun_skips_finished_images(reference, capsys):
    before = _files(reference)
    s = run_automask(reference, SETTINGS, threads=1, progress=False)
    assert s.resumed == 2 and not s.results
    assert _files(reference) == before
    # other settings over finished imasks need --overwrite
    from imis.errors import InputError

    with pytest.raises(InputError, match="--overwrite"):
        run_automask(reference, AutomaskSettings(points_per_side=4), threads=1, progress=False)


def test_released_imasks_are_not_overwritten_silently(btcv_dir, tmp_path):
    root = copy_dataset(btcv_dir, tmp_path / "ds", SLICES[:1])
    meta = json.loads((root / "dataset.json").read_text())
    meta["test"][0]["imask"] = f"imask/x___{SLICES[0]}.npy"
    (root / "dataset.json").write_text(json.dumps(meta))
    released = imed.read_imask(btcv_dir / "imask" / f"x___{SLICES[0]}.npy")
    (root / "imask").mkdir()
    np.save(root / "imask" / f"x___{SLICES[0]}.npy", released[..., None])
    assert main(["automask", str(root), *FAST]) == 2  # refused, with the reason


def test_resume_after_sigkill_is_byte_identical(btcv_dir, tmp_path, reference):
    root = copy_dataset(btcv_dir, tmp_path / "killed")
    cmd = [sys.executable, "-m", "imis.cli", "automask", str(root), *FAST]
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = root / "automask" / "records"
    deadline = time.time() + 600
    while (
        time.time() < deadline and proc.poll() is None and not (records.is_dir() and any(records.iterdir()))
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert _files(root) == _files(reference)
    assert not [p for p in (root / "imask").iterdir() if p.name.startswith(".")]


def test_bad_images_are_named_and_the_others_finish(btcv_dir, tmp_path, capsys):
    root = copy_dataset(btcv_dir, tmp_path / "bad", SLICES)
    meta = json.loads((root / "dataset.json").read_text())
    good, bad = meta["test"]
    (root / bad["image"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")  # corrupt PNG
    empty = {"image": "image/empty_1.png", "label": "label/x___empty_1.(13, 512, 512, 1).npz"}
    imed.write_png(root / empty["image"], np.zeros((512, 512, 3), np.uint8))  # an empty image
    (root / empty["label"]).write_bytes((root / good["label"]).read_bytes())
    shape = {"image": "image/small_1.png", "label": good["label"]}  # labels of another size
    imed.write_png(root / shape["image"], np.arange(64 * 64, dtype=np.uint8).reshape(64, 64))
    meta["test"] += [empty, shape]
    (root / "dataset.json").write_text(json.dumps(meta))
    assert main(["automask", str(root), *FAST]) == 1
    err = capsys.readouterr().err
    assert f"{bad['image'].split('/')[1]}: unreadable image" in err
    assert "empty_1.png: empty image" in err
    assert "do not match the image" in err and "small_1.png" in err
    ds = imed.read_dataset(root)
    assert [e.stem for e in ds.entries if e.imask is not None] == [SLICES[0]]


def test_local_processes_and_ray_equal_one_process(btcv_dir, tmp_path, reference):
    pool = copy_dataset(btcv_dir, tmp_path / "pool")
    assert main(["automask", str(pool), *FAST, "--workers", "2"]) == 0
    assert _files(pool) == _files(reference)
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install ray)")
    root = copy_dataset(btcv_dir, tmp_path / "ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        assert main(["automask", str(root), *FAST, "--executor", "ray", "--workers", "2"]) == 0
    finally:
        ray.shutdown()
    assert _files(root) == _files(reference)
