"""Reading images/volumes with geometry and writing label maps back, on real data (btcv-demo, Colin27)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from imis.errors import InputError
from imis.io import (
    LABEL_PALETTE,
    Geometry,
    ImageData,
    atomic_output,
    file_extension,
    parse_slice,
    read_image,
    require_2d,
    slice_volume,
    write_label_map,
    write_overlay_png,
)


def btcv_labels(btcv_dir, name: str = "ABD_001_100") -> np.ndarray:
    """The released one-hot CSR label of a btcv-demo slice as an id map (channel c -> label c+1)."""
    import scipy.sparse

    (path,) = (btcv_dir / "label").glob(f"x___{name}.*.npz")
    onehot = scipy.sparse.load_npz(path).toarray().reshape(-1, 512, 512)
    return (onehot * np.arange(1, onehot.shape[0] + 1)[:, None, None]).max(axis=0).astype(np.uint8)


def colin_labels(array: np.ndarray) -> np.ndarray:
    """A real-looking 3-class label map of Colin27 by intensity (0 background, 1, 2, 3)."""
    return np.digitize(array, [40, 90, 130]).astype(np.uint8)


# -- reading ----------------------------------------------------------------------------------------------
def test_read_btcv_png_rgb(btcv_dir):
    path = btcv_dir / "image" / "ABD_001_100.png"
    data = read_image(path)
    assert data.kind == "2d" and data.is_rgb
    assert data.array.shape == (512, 512, 3) and data.array.dtype == np.uint8
    assert data.spatial_shape == (512, 512)
    assert data.geometry == Geometry.identity(2)
    assert data.path == path
    np.testing.assert_array_equal(data.array, np.asarray(Image.open(path)))


def test_read_colin27_geometry_and_axes(colin, colin_sitk):
    assert colin.kind == "volume" and not colin.is_rgb
    assert colin.array.shape == (181, 217, 181) and colin.array.dtype == np.uint8  # (z, y, x)
    g = colin.geometry
    assert g.spacing == (1.0, 1.0, 1.0)
    assert g.origin == (90.0, 125.0, -71.0)  # LPS: SimpleITK negated the NIfTI RAS x and y
    assert g.direction == ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0))
    np.testing.assert_array_equal(colin.array, sitk.GetArrayFromImage(colin_sitk))
    # array[k, j, i] is ITK index (i, j, k), and index_to_physical is ITK's mapping
    for i, j, k in [(0, 0, 0), (90, 108, 90), (180, 10, 33)]:
        assert colin.array[k, j, i] == colin_sitk.GetPixel(i, j, k)
        np.testing.assert_allclose(
            g.index_to_physical((i, j, k)), colin_sitk.TransformIndexToPhysicalPoint((i, j, k))
        )
        np.testing.assert_allclose(g.physical_to_index(g.index_to_physical((i, j, k))), (i, j, k), atol=1e-9)
    # what nibabel would report (RAS): identity rotation, origin (-90, -125, -71)
    np.testing.assert_allclose(g.affine_ras()[:3, :3], np.eye(3))
    np.testing.assert_allclose(g.affine_ras()[:3, 3], (-90.0, -125.0, -71.0))


def test_dicom_series_with_oblique_direction_round_trips(colin_block, dicom_writer, tmp_path):
    uid = "1.2.826.0.1.3680043.2.1125.1.1"
    dicom_writer(colin_block, tmp_path / "series", uid)
    data = read_image(tmp_path / "series")
    assert data.kind == "volume" and data.array.shape == (8, 64, 64) and data.array.dtype == np.int16
    np.testing.assert_array_equal(data.array, sitk.GetArrayFromImage(colin_block))
    assert data.geometry.allclose(Geometry.from_sitk(colin_block), atol=1e-6)
    assert data.meta["series_uid"] == uid and data.meta["modality"] == "MR"


def test_dicom_folder_with_two_series_needs_a_uid(colin_block, dicom_writer, tmp_path):
    uid_a, uid_b = "1.2.826.0.1.3680043.2.1125.1.2", "1.2.826.0.1.3680043.2.1125.1.3"
    dicom_writer(colin_block, tmp_path, uid_a, prefix="a")
    dicom_writer(colin_block[:, :, :3], tmp_path, uid_b, modality="CT", prefix="b")
    with pytest.raises(InputError) as err:
        read_image(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "2 DICOM series" in msg and uid_a in msg and uid_b in msg
    picked = read_image(tmp_path, series_uid=uid_b)
    assert picked.array.shape == (3, 64, 64) and picked.meta["modality"] == "CT"
    with pytest.raises(InputError, match="no DICOM series with UID 1.2.3"):
        read_image(tmp_path, series_uid="1.2.3")


def test_16bit_png_is_kept(colin, tmp_path):
    grey = colin.array[90].astype(np.uint16) * 257  # a real slice over the full 16-bit range
    path = tmp_path / "slice16.png"
    Image.fromarray(grey).save(path)
    data = read_image(path)
    assert data.array.dtype == np.uint16 and not data.is_rgb
    np.testing.assert_array_equal(data.array, grey)


def test_rgba_png_becomes_rgb_and_multipage_tiff_a_volume(btcv_dir, colin, tmp_path):
    rgb = np.asarray(Image.open(btcv_dir / "image" / "ABD_001_100.png"))
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(tmp_path / "a.png")
    data = read_image(tmp_path / "a.png")
    assert data.is_rgb and data.array.shape == (512, 512, 3)
    np.testing.assert_array_equal(data.array, rgb)

    pages = [Image.fromarray(colin.array[k]) for k in (80, 90, 100)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    vol = read_image(tmp_path / "stack.tif")
    assert vol.kind == "volume" and vol.meta["frames"] == 3
    np.testing.assert_array_equal(vol.array, colin.array[[80, 90, 100]])


def test_npy_and_npz(btcv_dir, colin, tmp_path):
    grey = np.asarray(Image.open(btcv_dir / "image" / "ABD_001_100.png"))[..., 0]
    np.save(tmp_path / "grey.npy", grey)
    np.save(tmp_path / "grey1.npy", grey[..., None])  # (H, W, 1) as IMed-361M stores id maps
    np.save(tmp_path / "vol.npy", colin.array[80:84])
    np.savez_compressed(tmp_path / "single.npz", whatever=grey)
    np.savez(tmp_path / "keyed.npz", image=colin.array[80:84], spacing=np.ones(3))
    np.savez(tmp_path / "positional.npz", grey, np.zeros(3))
    for name, kind, shape in [
        ("grey.npy", "2d", (512, 512)),
        ("grey1.npy", "2d", (512, 512)),
        ("vol.npy", "volume", (4, 217, 181)),
        ("single.npz", "2d", (512, 512)),
        ("keyed.npz", "volume", (4, 217, 181)),
        ("positional.npz", "2d", (512, 512)),
    ]:
        data = read_image(tmp_path / name)
        assert (data.kind, data.array.shape) == (kind, shape), name
        assert data.geometry == Geometry.identity(len(shape))
    assert read_image(tmp_path / "keyed.npz").meta["npz_key"] == "image"
    np.testing.assert_array_equal(read_image(tmp_path / "single.npz").array, grey)


# -- slicing ----------------------------------------------------------------------------------------------
def test_slice_volume_axes_and_provenance(colin):
    z = slice_volume(colin, "z", 90)
    y = slice_volume(colin, 1, 100)
    x = slice_volume(colin, "x", 45)
    np.testing.assert_array_equal(z.array, colin.array[90])
    np.testing.assert_array_equal(y.array, colin.array[:, 100, :])
    np.testing.assert_array_equal(x.array, colin.array[:, :, 45])
    assert (z.kind, z.spatial_shape, y.spatial_shape, x.spatial_shape) == (
        "2d",
        (217, 181),
        (181, 181),
        (181, 217),
    )
    assert (y.slice_info.axis, y.slice_info.axis_name, y.slice_info.index) == (1, "y", 100)
    assert y.slice_info.parent_geometry == colin.geometry
    assert z.source.endswith("ch2.nii.gz (slice z=90)")


def test_slice_geometry_matches_itk_extract(colin, colin_sitk):
    z = slice_volume(colin, "z", 90)
    ref = sitk.Extract(colin_sitk, [181, 217, 0], [0, 0, 90])
    assert z.geometry.allclose(Geometry.from_sitk(ref))


def test_slice_index_out_of_range(colin):
    with pytest.raises(
        InputError, match=r"slice index 217 is out of range for axis y .*valid indices 0\.\.216"
    ):
        slice_volume(colin, "y", 217)
    with pytest.raises(InputError, match="not one of 'z', 'y', 'x'"):
        slice_volume(colin, "w", 3)


def test_require_2d(colin, btcv_dir):
    png = read_image(btcv_dir / "image" / "ABD_001_100.png")
    assert require_2d(png) is png
    np.testing.assert_array_equal(require_2d(colin, "x", 10).array, colin.array[:, :, 10])
    single = slice_volume(colin, "z", 5)
    vol1 = ImageData(
        colin.array[5:6], single.slice_info.volume_geometry(), path=colin.path, kind="volume"
    )  # a one-slice volume is taken as its slice
    np.testing.assert_array_equal(require_2d(vol1).array, colin.array[5])
    assert parse_slice("z:90") == ("z", 90) and parse_slice("1=3") == ("y", 3)
    with pytest.raises(InputError, match="AXIS:INDEX"):
        parse_slice("90")


# -- writing ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".npy"])
def test_label_map_round_trip_keeps_geometry(colin_sitk, ext, tmp_path):
    block = colin_sitk[40:140, 50:170, 60:100]  # real anatomy, non-zero origin, flipped axes
    ref = ImageData(sitk.GetArrayFromImage(block), Geometry.from_sitk(block), kind="volume")
    labels = colin_labels(ref.array)
    out = write_label_map(tmp_path / f"labels{ext}", labels, reference=ref)
    assert out == tmp_path / f"labels{ext}" and sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    back = read_image(out)
    np.testing.assert_array_equal(back.array, labels)
    assert back.array.dtype == np.uint8
    if ext != ".npy":
        assert back.geometry.allclose(ref.geometry)
        assert sitk.ReadImage(str(out)).GetOrigin() == block.GetOrigin()


def test_label_map_oblique_geometry_round_trip(colin_block, tmp_path):
    labels = (sitk.GetArrayFromImage(colin_block) > 300).astype(np.uint16) * 300  # needs uint16
    write_label_map(tmp_path / "l.nii.gz", labels, geometry=Geometry.from_sitk(colin_block))
    back = read_image(tmp_path / "l.nii.gz")
    assert back.array.dtype == np.uint16
    np.testing.assert_array_equal(back.array, labels)
    assert back.geometry.allclose(Geometry.from_sitk(colin_block), atol=1e-5)


@pytest.mark.parametrize(("axis", "index"), [("z", 90), ("y", 120), ("x", 33)])
def test_slice_label_map_lands_at_its_physical_position(colin, colin_sitk, axis, index, tmp_path):
    sl = slice_volume(colin, axis, index)
    labels = colin_labels(sl.array)
    path = write_label_map(tmp_path / "slice.nii.gz", labels, reference=sl)
    written = sitk.ReadImage(str(path))
    size = [181, 217, 181]
    size[2 - sl.slice_info.axis] = 1
    assert list(written.GetSize()) == size
    out = sitk.GetArrayFromImage(written)
    for r, c in [(0, 0), (100, 50), (labels.shape[0] - 1, labels.shape[1] - 1)]:
        parent_idx = [c, r]  # ITK (x, y, z) order of the 2D pixel's parent voxel
        parent_idx.insert(2 - sl.slice_info.axis, index)
        written_idx = list(parent_idx)
        written_idx[2 - sl.slice_info.axis] = 0
        expected_point = colin_sitk.TransformIndexToPhysicalPoint([int(v) for v in parent_idx])
        np.testing.assert_allclose(written.TransformIndexToPhysicalPoint(written_idx), expected_point)
        assert out[tuple(written_idx[::-1])] == labels[r, c]
    # reading the one-slice label map back gives the 2D labels, and rewriting keeps the position
    again = require_2d(read_image(path))
    np.testing.assert_array_equal(again.array, labels)
    write_label_map(tmp_path / "again.nii.gz", again.array, reference=again)
    assert read_image(tmp_path / "again.nii.gz").geometry.allclose(read_image(path).geometry)
    # PNG and npy get the plain 2D map
    np.testing.assert_array_equal(
        read_image(write_label_map(tmp_path / "s.png", labels, reference=sl)).array, labels
    )


def test_png_label_dtype(btcv_dir, tmp_path):
    labels = btcv_labels(btcv_dir)
    assert len(np.unique(labels)) > 3  # several organs
    small = write_label_map(tmp_path / "small.png", labels)
    assert Image.open(small).mode == "L"
    np.testing.assert_array_equal(read_image(small).array, labels)
    big = write_label_map(tmp_path / "big.png", labels.astype(np.int32) * 1000)
    assert Image.open(big).mode.startswith("I;16")
    back = read_image(big)
    assert back.array.dtype == np.uint16
    np.testing.assert_array_equal(back.array, labels.astype(np.int32) * 1000)


def test_overlay_png(btcv_dir, tmp_path):
    image = read_image(btcv_dir / "image" / "ABD_001_100.png").array[..., 0].astype(np.int16) - 1000
    labels = btcv_labels(btcv_dir)
    out = np.asarray(Image.open(write_overlay_png(tmp_path / "overlay.png", image, labels, alpha=0.4)))
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    lo, hi = image.min(), image.max()
    grey = np.rint((image - lo) / (hi - lo) * 255).astype(np.uint8)
    bg = labels == 0
    np.testing.assert_array_equal(out[bg], np.repeat(grey[bg][:, None], 3, axis=1))  # min-max display
    for lab in np.unique(labels)[1:]:
        region = labels == lab
        inner = region.copy()
        inner[1:-1, 1:-1] &= region[:-2, 1:-1] & region[2:, 1:-1] & region[1:-1, :-2] & region[1:-1, 2:]
        outline = region & ~inner
        assert outline.any()
        assert (out[outline] == LABEL_PALETTE[lab - 1]).all()  # opaque outline in the label's colour
    assert len({tuple(LABEL_PALETTE[v - 1]) for v in np.unique(labels)[1:]}) == len(np.unique(labels)) - 1


def test_atomic_output_leaves_target_untouched_on_error(tmp_path):
    target = tmp_path / "sub" / "labels.nii.gz"
    with atomic_output(target) as tmp:
        assert file_extension(tmp) == ".nii.gz" and tmp.parent == target.parent
        tmp.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["labels.nii.gz"]
