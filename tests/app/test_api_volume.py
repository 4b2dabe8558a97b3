"""The volume workflow over HTTP with the real imis-lite on Colin27: objects on different slices and
views land in one label map without overwriting each other, propagation through the volume with
progress (compared with AAL), export/import of the label map, object edits, a DICOM zip upload, and
the session store's bounds."""

from __future__ import annotations

import io
import time
import zipfile

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from tests.app.conftest import AAL, COLIN, live_server
from tests.app.helpers import bbox, dice

THALAMUS_L, THALAMUS_R = 77, 78
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def atlas():
    if not (COLIN.exists() and AAL.exists()):
        pytest.skip("Colin27/AAL absent")
    return sitk.GetArrayFromImage(sitk.ReadImage(str(AAL)))


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server, timeout=180) as c:
        yield c


def _open_colin(c) -> str:
    r = c.post("/api/open", json={"path": "ch2.nii.gz"})
    assert r.status_code == 200, r.text
    return r.json()["doc"]["id"]


def _export(c, sid) -> tuple[np.ndarray, bytes]:
    r = c.get(f"/api/s/{sid}/export", params={"fmt": "nii.gz"})
    assert r.status_code == 200
    path = f"/tmp/imis-test-export-{sid}.nii.gz"
    with open(path, "wb") as f:
        f.write(r.content)
    return sitk.GetArrayFromImage(sitk.ReadImage(path)), r.content


def test_objects_on_slices_and_views_do_not_overwrite(client, atlas):
    sid = _open_colin(client)
    thal = atlas == THALAMUS_L
    z = int(np.round(np.nonzero(thal)[0].mean()))
    box1 = bbox(thal[z], pad=2)
    r = client.post(f"/api/s/{sid}/prompt", json={"axis": "z", "index": z, "kind": "box", "value": box1})
    assert r.status_code == 200, r.text
    first, _ = _export(client, sid)
    assert (first == 1).sum() > 50
    # object 2 on a coronal plane, with a box over both thalami: it crosses object 1's axial plane
    client.post(f"/api/s/{sid}/objects", json={"op": "next", "name": "both thalami"})
    both = (atlas == THALAMUS_L) | (atlas == THALAMUS_R)
    y = int(np.round(np.nonzero(thal)[1].mean()))
    r = client.post(
        f"/api/s/{sid}/prompt", json={"axis": "y", "index": y, "kind": "box", "value": bbox(both[:, y, :], 2)}
    )
    assert r.status_code == 200
    labels, _ = _export(client, sid)
    assert ((first == 1) == (labels == 1)).all(), "object 2 overwrote object 1"
    assert (labels[:, y, :] == 2).sum() > 50
    assert set(np.unique(labels)) == {0, 1, 2}
    st = client.get(f"/api/s/{sid}").json()
    assert [o["name"] for o in st["objects"]] == ["object 1", "both thalami"]


def test_propagate_through_the_volume(client, atlas):
    sid = _open_colin(client)
    thal = atlas == THALAMUS_L
    z = int(np.round(np.nonzero(thal)[0].mean()))
    client.post(
        f"/api/s/{sid}/prompt", json={"axis": "z", "index": z, "kind": "box", "value": bbox(thal[z], 2)}
    )
    r = client.post(f"/api/s/{sid}/propagate", json={"axis": "z", "index": z, "max_slices": 6})
    assert r.status_code == 200 and r.json()["job"]["running"]
    seen, t0 = set(), time.monotonic()
    while True:
        job = client.get(f"/api/s/{sid}/progress").json()["job"]
        seen.add(job["done"])
        if not job["running"]:
            break
        assert time.monotonic() - t0 < 500
        time.sleep(0.5)
    assert job["error"] is None and 5 <= job["filled"] <= 12
    assert len(seen) > 2  # progress was reported while it ran
    labels, _ = _export(client, sid)
    zs = np.nonzero((labels == 1).any(axis=(1, 2)))[0]
    window = slice(z - 6, z + 7)  # the slices it was allowed to fill
    d_win, d3 = dice(labels[window] == 1, thal[window]), dice(labels == 1, thal)
    print(
        f"propagated left thalamus: {job['filled']} slices, z {zs.min()}..{zs.max()}: Dice vs AAL on them "
        f"{d_win:.3f}, whole structure {d3:.3f}"
    )
    assert d_win >= 0.6
    r = client.post(f"/api/s/{sid}/history", json={"op": "undo", "axis": "z", "index": z})
    assert r.json()["draft"]["can_redo"]  # the propagation is one undoable step
    labels, _ = _export(client, sid)
    assert set(np.nonzero((labels == 1).any(axis=(1, 2)))[0]) == {z}


def test_export_import_and_object_edits(client):
    sid = _open_colin(client)
    client.post(
        f"/api/s/{sid}/prompt", json={"axis": "z", "index": 80, "kind": "click", "value": [90, 110, True]}
    )
    _, blob = _export(client, sid)
    sid2 = _open_colin(client)
    r = client.post(f"/api/s/{sid2}/import", params={"name": "labels.nii.gz"}, content=blob)
    assert r.status_code == 200, r.text
    objs = r.json()["objects"]
    assert objs[0]["label"] == 1 and len(objs) == 2  # the imported label and a fresh one to draw
    r = client.post(
        f"/api/s/{sid2}/objects", json={"op": "update", "label": 1, "name": "ventricle", "visible": False}
    )
    assert r.json()["objects"][0] == {
        "label": 1,
        "name": "ventricle",
        "color": [230, 25, 75],
        "visible": False,
    }
    r = client.post(f"/api/s/{sid2}/objects", json={"op": "update", "label": 1, "color": "#00ff00"})
    assert r.json()["objects"][0]["color"] == [0, 255, 0]
    assert (
        client.post(f"/api/s/{sid2}/objects", json={"op": "update", "label": 1, "name": ""}).status_code
        == 400
    )
    r = client.post(f"/api/s/{sid2}/objects", json={"op": "delete", "label": 1, "axis": "z", "index": 80})
    assert r.status_code == 200 and all(o["label"] != 1 for o in r.json()["objects"])
    labels, _ = _export(client, sid2)
    assert not labels.any()
    bad = client.post(f"/api/s/{sid2}/import", params={"name": "x.png"}, content=_png_bytes((5, 5)))
    assert bad.status_code == 400 and "volume" in bad.json()["detail"]


def _png_bytes(shape) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros(shape, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _dicom_zip(n: int = 6) -> bytes:
    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(COLIN)))[60 : 60 + n].astype(np.int16)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, plane in enumerate(vol):
            img = sitk.GetImageFromArray(plane)
            img.SetSpacing((1.0, 1.0))
            for tag, value in (
                ("0008|0060", "MR"),
                ("0020|000d", "1.2.826.0.1.3680043.2.1125.2"),
                ("0020|000e", "1.2.826.0.1.3680043.2.1125.1"),
                ("0020|0052", "1.2.826.0.1.3680043.2.1125.3"),
                ("0008|0018", f"1.2.826.0.1.3680043.2.1125.10.{i + 1}"),
                ("0008|0016", "1.2.840.10008.5.1.4.1.1.4"),
                ("0020|0013", str(i + 1)),
                ("0020|0032", f"0\\0\\{i}"),
                ("0020|0037", "1\\0\\0\\0\\1\\0"),
                ("0028|0030", "1\\1"),
                ("0018|0050", "1"),
            ):
                img.SetMetaData(tag, value)
            path = f"/tmp/imis-dicom-{i}.dcm"
            w = sitk.ImageFileWriter()
            w.KeepOriginalImageUIDOn()
            w.SetFileName(path)
            w.Execute(img)
            zf.write(path, f"series/slice{i:03d}.dcm")
    return buf.getvalue()


def test_dicom_zip_upload(client):
    r = client.post("/api/upload", params={"name": "series.zip"}, content=_dicom_zip())
    assert r.status_code == 200, r.text
    assert r.json()["doc"]["shape"] == [6, 217, 181]
    sid = r.json()["doc"]["id"]
    r = client.post(
        f"/api/s/{sid}/prompt", json={"axis": "z", "index": 3, "kind": "box", "value": [60, 60, 120, 140]}
    )
    assert r.status_code == 200
    seg = client.get(f"/api/s/{sid}/export", params={"fmt": "dcm"})
    assert seg.status_code == 200, seg.text
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(seg.content))
    assert ds.Modality == "SEG" and ds.SegmentSequence[0].SegmentLabel == "object 1"
    assert r.json()["doc"]["dicom_series"]
    # read back with highdicom: the frames, placed on their source slices, are the NIfTI export's labels
    import highdicom as hd

    seg_ds = hd.seg.Segmentation.from_dataset(ds)
    uids = [f"1.2.826.0.1.3680043.2.1125.10.{i + 1}" for i in range(6)]
    on_slices = seg_ds.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    labels, _ = _export(client, sid)
    assert on_slices.shape == labels.shape and (labels == 1).sum() > 100
    assert np.array_equal(on_slices, labels)
    sid2 = _open_colin(client)  # not a DICOM series: a clear refusal
    client.post(
        f"/api/s/{sid2}/prompt", json={"axis": "z", "index": 80, "kind": "click", "value": [90, 110, True]}
    )
    r = client.get(f"/api/s/{sid2}/export", params={"fmt": "dcm"})
    assert r.status_code == 400 and "DICOM series" in r.json()["detail"] and "/tmp" not in r.json()["detail"]


def test_store_is_bounded_and_evicts_least_recent(model, data_dir):
    with (
        live_server(model, data_dir=data_dir, max_sessions=2) as url,
        httpx.Client(base_url=url, timeout=120) as c,
    ):
        ids = [
            c.post("/api/open", json={"path": "btcv/ABD_037_71.png"}).json()["doc"]["id"] for _ in range(3)
        ]
        assert c.get(f"/api/s/{ids[0]}").status_code == 404
        r = c.get(f"/api/s/{ids[0]}")
        assert "expired" in r.json()["detail"]
        assert all(c.get(f"/api/s/{i}").status_code == 200 for i in ids[1:])
        assert c.get("/api/info").json()["sessions"] == 2
