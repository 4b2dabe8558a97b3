"""DICOM SEG output for label maps made on a DICOM series (highdicom), validated on read-back.

One Segmentation instance per label map: each label value becomes one segment (numbered 1..N in label
order, as DICOM requires consecutive segment numbers; the segment label is the object's name, else
``label <value>``, and the tracking id keeps the original value). Frames reference the source
instances, so a viewer places them on the series' own slices: positions and orientation come from the
source files, not from a recomputed geometry. The file is written to a temporary name, read back with
highdicom and checked (referenced series, segment labels, every frame's position and the orientation
against its source slice, the label map itself) before it is renamed into place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from imis.errors import InputError
from imis.io.files import atomic_output
from imis.io.image import ImageData

__all__ = ["read_dicom_seg", "write_dicom_seg"]


def _sources(reference: ImageData, src: str) -> list:
    import pydicom

    files = reference.meta.get("files")
    if reference.kind != "volume" or not files:
        raise InputError(
            f"{src}: DICOM SEG needs the input to be a DICOM series folder (got {reference.source}); "
            "write .nii.gz or .nrrd instead"
        )
    if len(files) != reference.array.shape[0]:
        raise InputError(f"{src}: {len(files)} source files for {reference.array.shape[0]} slices")
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def _segment_label(value: int, names: Mapping[int, str]) -> str:
    return str(names.get(value) or f"label {value}")[:64]  # LO: at most 64 characters


def _descriptions(values: list[int], names: Mapping[int, str]) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algo = hd.AlgorithmIdentificationSequence(
        name="imis", version="0.1.0", family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=_segment_label(v, names),
            # The names are free text, not coded anatomy: the generic "anatomical structure" code says so.
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.AnatomicalStructure,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algo,
            tracking_id=f"imis label {v}",
            tracking_uid=hd.UID(),
        )
        for n, v in enumerate(values, 1)
    ]


def write_dicom_seg(
    path: str | os.PathLike,
    labels: np.ndarray,
    reference: ImageData,
    names: Mapping[int, str] | None = None,
) -> Path:
    """Write ``labels`` ((z, y, x), the reference series' voxel order) as a DICOM SEG; return its path."""
    import highdicom as hd

    src = str(path)
    arr = np.asarray(labels)
    if arr.shape != tuple(reference.array.shape):
        raise InputError(
            f"{src}: labels of shape {arr.shape} do not match the series {reference.array.shape}"
        )
    values = [int(v) for v in np.unique(arr) if v != 0]
    if not values:
        raise InputError(f"{src}: the label map is empty; there is no segment to write")
    datasets = _sources(reference, src)
    numbers = np.zeros(arr.shape, dtype=np.uint16)
    for n, v in enumerate(values, 1):
        numbers[arr == v] = n
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=numbers if len(values) > 1 else (numbers > 0),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(values, names or {}),
        series_instance_uid=hd.UID(),
        series_number=9901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="imis",
        manufacturer_model_name="imis",
        software_versions="0.1.0",
        device_serial_number="0",
        content_label="IMIS",
    )
    with atomic_output(path) as tmp:
        seg.save_as(tmp)
        _validate(tmp, src, datasets, numbers, [_segment_label(v, names or {}) for v in values])
    return Path(path)


def read_dicom_seg(path: str | os.PathLike, reference: ImageData) -> np.ndarray:
    """The label map ((z, y, x), segment numbers) of a DICOM SEG made on the series ``reference``."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    datasets = _sources(reference, str(path))
    uids = [ds.SOPInstanceUID for ds in datasets]
    return seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)


def _validate(tmp: Path, src: str, datasets: list, numbers: np.ndarray, seg_labels: list[str]) -> None:
    """Read the written file back and compare it with what was meant; InputError on any difference."""
    import highdicom as hd

    seg = hd.seg.segread(str(tmp))
    series = {ds.SeriesInstanceUID for ds in datasets}
    ref = {s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence}
    problems = []
    if ref != series:
        problems.append(f"references series {sorted(ref)}, not {sorted(series)}")
    got_labels = [seg.get_segment_description(n).SegmentLabel for n in seg.get_segment_numbers()]
    if got_labels != seg_labels:
        problems.append(f"segment labels {got_labels} != {seg_labels}")
    iop = [
        float(v)
        for v in seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    ]
    if not np.allclose(iop, [float(v) for v in datasets[0].ImageOrientationPatient], atol=1e-4):
        problems.append("orientation differs from the source series")
    by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        pos = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        if uid not in by_uid or not np.allclose(
            pos, [float(v) for v in by_uid[uid].ImagePositionPatient], atol=1e-3
        ):
            problems.append(f"a frame's position {pos} does not match its source slice")
            break
    uids = [ds.SOPInstanceUID for ds in datasets]
    back = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
    if back.shape != numbers.shape or not np.array_equal(back, numbers):
        problems.append("the label map read back differs from the one written")
    if problems:
        raise InputError(f"{src}: DICOM SEG failed its read-back check: {'; '.join(problems)}")
