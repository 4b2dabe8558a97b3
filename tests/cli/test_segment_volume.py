"""`imis segment --propagate` on real volumes: DICOM SEG out, and one clear error (nothing written) per bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imis.cli import main

TEMPLATES = Path("/usr/share/mricron/templates")


def _series(name: str) -> Path:
    import pydicom.data

    root = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"
    path = root / name
    if not path.is_dir():
        pytest.skip(f"pydicom's sample series {name} is absent")
    return path


def _fails(capsys, argv: list[str], out: Path, match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imis: error:") and "\n" not in err and match in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), "something was written"


def test_2d_image_with_propagate_is_refused(tmp_path, capsys, btcv_dir):
    out = tmp_path / "labels.nii.gz"
    image = str(btcv_dir / "image" / "ABD_001_100.png")
    _fails(
        capsys, ["segment", image, "--box", "1,1,9,9", "--propagate", "-o", str(out)], out, "is a 2D image"
    )


def test_slice_out_of_range_is_refused(tmp_path, capsys):
    out = tmp_path / "labels.nii.gz"
    argv = [
        "segment",
        str(TEMPLATES / "ch2.nii.gz"),
        "--slice",
        "181",
        "--box",
        "1,1,9,9",
        "--propagate",
        "-o",
        str(out),
    ]
    _fails(capsys, argv, out, "slice index 181 is out of range for axis z")


def test_refine_without_propagate_is_refused(tmp_path, capsys):
    out = tmp_path / "labels.nii.gz"
    argv = ["segment", str(TEMPLATES / "ch2.nii.gz"), "--slice", "78", "--box", "67,92,90,121"]
    _fails(capsys, [*argv, "--refine", "orthogonal", "-o", str(out)], out, "--refine orthogonal: refines a")


def test_series_with_missing_slices_is_refused(tmp_path, capsys):
    out = tmp_path / "seg.dcm"
    argv = [
        "segment",
        str(_series("77654033/CT2")),
        "--slice",
        "1",
        "--box",
        "2,2,9,9",
        "--propagate",
        "-o",
        str(out),
    ]
    _fails(capsys, argv, out, "missing or uneven slices")


def test_label_map_of_another_geometry_is_refused(tmp_path, capsys):
    import SimpleITK as sitk

    other = tmp_path / "other.nii.gz"
    img = sitk.GetImageFromArray(np.zeros((5, 16, 16), np.uint8))  # the series' shape, not its geometry
    sitk.WriteImage(img, str(other))
    out = tmp_path / "seg.nii.gz"
    argv = [
        "segment",
        str(_series("98892001/CT5N")),
        "--slice",
        "2",
        "--box",
        "4,4,11,11",
        "--labels",
        str(other),
        "--propagate",
        "-o",
        str(out),
    ]
    _fails(capsys, argv, out, "differs from the volume")


def test_dicom_seg_from_a_box_with_propagation(tmp_path, capsys):
    """pydicom's CT sample series (5 axial slices, LPS): the SEG references it and reads back in place."""
    import highdicom as hd

    from imis.io import read_image
    from imis.io.dicom_seg import read_dicom_seg

    series = _series("98892001/CT5N")
    out = tmp_path / "seg.dcm"
    argv = [
        "segment",
        str(series),
        "--slice",
        "2",
        "--box",
        "3,3,12,12",
        "--propagate",
        "--name",
        "blob",
        "-o",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    seg = hd.seg.segread(str(out))
    data = read_image(series)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == data.meta["series_uid"]
    assert seg.get_segment_description(1).SegmentLabel == "blob"
    labels = read_dicom_seg(out, data)
    assert labels.shape == data.array.shape and labels[2].any()
