"""The README's examples as data: its code blocks by section, and the inputs its commands name.

The README's commands use real paths where the data is here (btcv-demo under ``../shared``, Colin27 and
AAL under /usr/share/mricron/templates) and a few names for the user's own files (``scan.nrrd``,
``series_folder/``, ``raw_nnunet_folder/``, ``dicom_series/``, ``Task04_Hippocampus``);
:func:`make_inputs` makes those from Colin27 + AAL and pydicom's sample CT series, the YAML files from the
README's own ``yaml`` blocks. What one section's commands read from another's (``imis automask
data/mydataset`` after ``imis prepare ... --out data/mydataset``) is found by :func:`producer`.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
COLIN = Path("/usr/share/mricron/templates")

#: README sections whose code is not run, and why
NOT_RUN = {
    "The two commands": "`make run` and `make test` are the main job and this test suite themselves",
    "Training: `imis train`, and how imis-lite was made": "the training recipe: hours of CPU and GPU time",
}

#: single README commands (by a piece of their text) that need what this machine lacks, and why
NOT_RUN_COMMANDS = {
    "--executor ray --device cuda": "a running Ray cluster (RAY_ADDRESS=auto) with CUDA GPUs",
}

#: the README section whose commands start a server: run in the background, asked, stopped
SERVE_SECTION = "The browser tool: `imis serve`"

#: absolute example paths of the user's own data, mapped to folders :func:`make_inputs` makes
USER_PATHS = {"/data": "data"}


def readme_blocks(lang: str, readme: Path = REPO / "README.md") -> list[tuple[str, str]]:
    """``(section title, code)`` of every fenced ``lang`` block, in order."""
    blocks, section, code = [], "", None
    for line in readme.read_text(encoding="utf-8").splitlines():
        if code is None and re.match(r"#{2,4} ", line):
            section = line.lstrip("#").strip()
        elif code is None and line.strip() == f"```{lang}":
            code = []
        elif code is not None and line.strip() == "```":
            blocks.append((section, "\n".join(code)))
            code = None
        elif code is not None:
            code.append(line)
    return blocks


def commands(code: str) -> list[list[str]]:
    """The argv of each shell command of a block (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            out.append(argv)
    return out


def yaml_files(readme: Path = REPO / "README.md") -> dict[str, str]:
    """The README's YAML examples by the file name their first comment line gives (``# cases.yaml``)."""
    files = {}
    for _, code in readme_blocks("yaml", readme):
        m = re.match(r"#\s*([\w.-]+\.ya?ml)", code)
        if m:
            files[m.group(1)] = code + "\n"
    return files


def _colin_block(z0: int, z1: int):
    import SimpleITK as sitk

    t1 = sitk.ReadImage(str(COLIN / "ch2.nii.gz"))
    aal = sitk.ReadImage(str(COLIN / "aal.nii.gz"))
    return t1[:, :, z0:z1], aal[:, :, z0:z1]


def write_dicom_series(image, folder: Path, series_uid: str = "1.2.826.0.1.3680043.2.1125.1.22") -> None:
    """A 3D SimpleITK image as an int16 DICOM series, one file per slice (the io tests' writer)."""
    import SimpleITK as sitk

    from tests.io.dicom_helpers import write_dicom_series as write_series

    write_series(sitk.Cast(image, sitk.sitkInt16), folder, series_uid)


def make_inputs(work: Path, shared: Path) -> None:
    """The files the README's commands name, in ``work`` (the commands' folder), from real data."""
    import SimpleITK as sitk

    from imis.data.formats.msd import write_nnunet_raw
    from imis.io import read_image

    (work.parent / "shared").symlink_to(shared.resolve())  # the README's ../shared
    sitk.WriteImage(sitk.ReadImage(str(COLIN / "ch2.nii.gz")), str(work / "scan.nrrd"))
    t1, aal = _colin_block(70, 94)  # 24 axial slices through the thalami
    write_dicom_series(t1, work / "series_folder")
    sitk.WriteImage(t1, str(work / "t1_block.nii.gz"))
    labels = sitk.GetArrayFromImage(aal)
    labels = np.where(np.isin(labels, (77, 78)), labels, 0).astype(np.uint8)
    image = read_image(work / "t1_block.nii.gz")
    write_nnunet_raw(
        work / "raw_nnunet_folder",
        [("colin_000", image, labels)],
        {77: "Thalamus_L", 78: "Thalamus_R"},
        "MR",
        name="colin-thalami",
    )
    for name, text in yaml_files().items():
        (work / name).write_text(text, encoding="utf-8")
    (work / "dicom_series").symlink_to(pydicom_series())  # read only: the SEG is written beside it
    write_hippocampus_task(work / "Task04_Hippocampus")


def pydicom_series() -> Path:
    """pydicom's CT sample series (5 axial 16 x 16 slices, one DICOM file each), shipped with pydicom."""
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


def write_hippocampus_task(folder: Path) -> None:
    """A one-case MSD folder like Task04_Hippocampus: a Colin27 block around AAL's left hippocampus
    (label 1), 20 of the 40 axial slices it spans (44-83), so that its propagations stay short."""
    import SimpleITK as sitk

    from imis.data.formats.msd import write_nnunet_raw
    from imis.io import read_image

    t1 = sitk.ReadImage(str(COLIN / "ch2.nii.gz"))[45:86, 80:130, 54:74]  # x, y, z
    aal = sitk.ReadImage(str(COLIN / "aal.nii.gz"))[45:86, 80:130, 54:74]
    tmp = folder.parent / "hippocampus_block.nii.gz"
    sitk.WriteImage(t1, str(tmp))
    labels = (sitk.GetArrayFromImage(aal) == 37).astype(np.uint8)
    cases = [("hippocampus_001", read_image(tmp), labels)]
    write_nnunet_raw(folder, cases, {1: "Hippocampus"}, "MRI", name="Task04_Hippocampus", style="msd")
    tmp.unlink()


#: options whose value is a file or folder a command writes
OUTPUT_OPTIONS = ("-o", "--output", "--out", "--overlay", "--preview")


def outputs(argv: list[str]) -> list[str]:
    """What ``imis ...`` writes: the values of its output options; ``automask DATASET``: DATASET/imask."""
    named = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in OUTPUT_OPTIONS]
    return named + ([f"{argv[2]}/imask"] if argv[1:2] == ["automask"] else [])


def producer(path: str) -> list[str] | None:
    """The first README command that writes ``path`` (``-o``/``--out``), or None."""
    for _, code in readme_blocks("bash"):
        for argv in commands(code):
            if path in outputs(argv):
                return argv
    return None


def split_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``VAR=value imis ...`` as ({VAR: value}, the command's argv)."""
    env = {}
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):
        key, value = argv[0].split("=", 1)
        env[key], argv = value, argv[1:]
    return env, argv


def not_run_reason(argv: list[str]) -> str | None:
    """Why a README command is not run here (:data:`NOT_RUN_COMMANDS`), or None."""
    line = " ".join(argv)
    return next((why for text, why in NOT_RUN_COMMANDS.items() if text in line), None)
