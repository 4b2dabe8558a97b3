"""Writing a DICOM series from a SimpleITK volume, for the io and fuzz tests' fixtures."""

from __future__ import annotations

from pathlib import Path


def write_dicom_series(image, folder: Path, series_uid: str, modality: str = "MR", prefix: str = "s") -> None:
    """Write a 3D SimpleITK image as one DICOM file per slice (as SimpleITK's DicomSeriesFromArray example)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    tags = {
        "0008|0060": modality,
        "0008|0008": "DERIVED\\SECONDARY",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1.77",
        "0020|000e": series_uid,
        "0020|0037": "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
        "0008|103e": "imis io test",
    }
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        pos = image.TransformIndexToPhysicalPoint((0, 0, k))
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.10f}" for v in pos))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(sl)
