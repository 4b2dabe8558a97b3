"""Label maps written for a volume land on the same anatomy when read back by nibabel, SimpleITK, highdicom.

Real volumes: Colin27 + AAL (RAS NIfTI), pydicom's CT sample series (LPS DICOM, 5 axial slices), and an
oblique volume (a Colin27 block given a rotated direction). Each check goes through another library's
reading of the written file, compared with an independent reading of the source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imis.io import read_image, write_label_map

TEMPLATES = Path("/usr/share/mricron/templates")
nib = pytest.importorskip("nibabel")


def _world_centroid_ras(path: Path, value: int) -> np.ndarray:
    img = nib.load(str(path))
    ijk = np.argwhere(np.asarray(img.dataobj) == value).mean(axis=0)
    return img.affine[:3, :3] @ ijk + img.affine[:3, 3]


@pytest.fixture(scope="module")
def colin():
    if not (TEMPLATES / "ch2.nii.gz").is_file():
        pytest.skip("mricron-data (Colin27, AAL) is not installed")
    return read_image(TEMPLATES / "ch2.nii.gz"), read_image(TEMPLATES / "aal.nii.gz")


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_ras_nifti_label_map_lands_on_the_left_thalamus(colin, tmp_path, ext):
    import SimpleITK as sitk

    image, aal = colin
    labels = np.where(aal.array == 77, 5, 0).astype(np.uint8)  # AAL 77 = Thalamus_L
    out = write_label_map(tmp_path / f"thal{ext}", labels, reference=image)
    back = sitk.ReadImage(str(out))
    ref = sitk.ReadImage(str(TEMPLATES / "ch2.nii.gz"))
    assert back.GetOrigin() == pytest.approx(ref.GetOrigin()) and back.GetDirection() == pytest.approx(
        ref.GetDirection()
    )
    assert np.array_equal(sitk.GetArrayFromImage(back), labels)
    # SimpleITK's physical centroid (LPS) of the written label = nibabel's (RAS) of AAL's own thalamus.
    idx = np.argwhere(sitk.GetArrayFromImage(back) == 5).mean(axis=0)[::-1]
    lps = np.array(back.TransformContinuousIndexToPhysicalPoint(idx.tolist()))
    ras_aal = _world_centroid_ras(TEMPLATES / "aal.nii.gz", 77)
    assert lps * [-1, -1, 1] == pytest.approx(ras_aal, abs=1e-3)
    assert ras_aal[0] < 0, "the left thalamus is on the left (RAS x < 0)"
    if ext == ".nii.gz":
        assert _world_centroid_ras(out, 5) == pytest.approx(ras_aal, abs=1e-3)
        assert np.allclose(
            nib.load(str(out)).affine, nib.load(str(TEMPLATES / "ch2.nii.gz")).affine, atol=1e-4
        )


def test_lps_dicom_series_label_map_read_back_by_highdicom_and_nibabel(tmp_path):
    import highdicom as hd
    import pydicom
    import pydicom.data

    from imis.io.dicom_seg import write_dicom_seg

    series = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
    if not series.is_dir():
        pytest.skip("pydicom's sample series is absent")
    data = read_image(series)
    labels = np.zeros(data.array.shape, np.uint8)
    k, j, i = 3, 5, 9  # one voxel: slice 3, row 5, column 9
    labels[k, j, i] = 1
    # Independent truth from pydicom: the file of slice k (sorted along the normal) and its geometry.
    dss = sorted(
        (pydicom.dcmread(f) for f in series.iterdir()), key=lambda d: float(d.ImagePositionPatient[2])
    )
    ds = dss[k]
    row_dir, col_dir = (
        np.array(ds.ImageOrientationPatient[:3], float),
        np.array(ds.ImageOrientationPatient[3:], float),
    )
    dr, dc = (float(v) for v in ds.PixelSpacing)  # row spacing, column spacing
    lps = np.array(ds.ImagePositionPatient, float) + row_dir * dc * i + col_dir * dr * j

    seg_path = write_dicom_seg(tmp_path / "seg.dcm", labels, data, names={1: "dot"})
    seg = hd.seg.segread(str(seg_path))
    (frame,) = seg.PerFrameFunctionalGroupsSequence
    src_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    assert src_uid == ds.SOPInstanceUID
    assert np.allclose(
        [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient], ds.ImagePositionPatient
    )
    mask = seg.get_pixels_by_source_instance([ds.SOPInstanceUID], combine_segments=True)[0]
    assert np.argwhere(mask).tolist() == [[j, i]]

    nii = write_label_map(tmp_path / "seg.nii.gz", labels, reference=data)
    assert _world_centroid_ras(nii, 1) == pytest.approx(lps * [-1, -1, 1], abs=1e-3)


def test_oblique_volume_label_map_keeps_its_direction(colin, tmp_path):
    import SimpleITK as sitk

    image, aal = colin
    block = sitk.GetImageFromArray(np.ascontiguousarray(image.array[60:100, 80:150, 50:130]))
    a = np.deg2rad(25)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.diag(
        [-1.0, -1.0, 1.0]
    )
    block.SetDirection(rot.ravel().tolist())
    block.SetOrigin((12.5, -30.0, 4.0))
    block.SetSpacing((0.9, 1.1, 1.3))
    src = tmp_path / "oblique.nii.gz"
    sitk.WriteImage(block, str(src))
    data = read_image(src)
    labels = (aal.array[60:100, 80:150, 50:130] == 77).astype(np.uint8)
    out = write_label_map(tmp_path / "oblique_labels.nii.gz", labels, reference=data)
    img_aff, lab_aff = nib.load(str(src)).affine, nib.load(str(out)).affine
    assert np.allclose(img_aff, lab_aff, atol=1e-4)
    assert not np.allclose(img_aff[:3, :3], np.diag(np.diag(img_aff[:3, :3]))), "the volume is oblique"
    back = sitk.ReadImage(str(out))
    assert back.GetDirection() == pytest.approx(tuple(rot.ravel()), abs=1e-5)
    assert np.array_equal(np.asarray(nib.load(str(out)).dataobj).transpose(2, 1, 0), labels)
