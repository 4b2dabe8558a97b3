"""A DICOM file's element headers walked before GDCM (through SimpleITK) touches the file.

GDCM allocates what an element header claims while it probes a file, and keeps that memory when it then
fails: in the long fuzz run a few damaged files took gigabytes each and the process was killed by the
kernel's OOM killer. The damages that do it:

* a value length that runs past the end of the file (four flipped bytes of a length asked for 2 GB);
* a VR that is not one of DICOM's VRs in an explicit-VR element: GDCM then reads the next four bytes as a
  32-bit length (``UI`` of the transfer syntax UID turned into ``0I`` made it read ``1.2.`` as
  775,040,561 bytes);
* a length that is wrong but inside the file (the Specific Character Set's 10 turned into 127): the walk
  goes on from the wrong place and reads garbage as the next element's length (1.5 GB taken and freed).

And native pixel data shorter than the header's image size is not an error to GDCM: it returns the image
with the missing part filled from its buffer, so that size is checked too (:func:`check_dicom_pixel_data`).

So the walk reads every element header the way GDCM does (tag, VR, 16- or 32-bit length; items and
sequences of undefined length walked into) and seeks over the values, and each header must be sound.
pydicom's own reader is no help here: it reads an unknown VR with a 16-bit length, and stops at the first
value it cannot decode (the character set above), before the element that does the damage.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from imis.errors import InputError

_PREAMBLE = 128  # bytes before the DICM magic
_DEFER = 256  # bytes: pydicom skips larger values instead of reading them
_UNDEFINED = 0xFFFFFFFF  # a sequence or item of undefined length: walked into, no length to check
_PIXEL_DATA = (0x7FE0, 0x0010)  # the walk ends there: encapsulated pixel data holds fragments, not elements
_ITEM_GROUP = 0xFFFE  # items and delimiters: a tag and a 32-bit length, never a VR
# DICOM's VRs (PS3.5 table 6.2-1) and those with a 32-bit length in explicit VR (PS3.5 7.1.2)
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
_VR32 = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95")  # the rest of the file is a deflate stream


class _Element(NamedTuple):
    group: int
    elem: int
    vr: bytes | None  # None: implicit VR, an item or a delimiter
    length: int
    start: int  # offset of the element's tag
    value: int  # offset of its value

    @property
    def tag(self) -> str:
        return f"({self.group:04X},{self.elem:04X})"


def _elements(fh: BinaryIO, pos: int, size: int, implicit: bool, little: bool) -> Iterator[_Element]:
    """The element headers from ``pos`` on, sequences and items walked into; ends at the end of the file,
    at the pixel data, at a header cut by the end of the file, or after yielding an element whose VR is not
    DICOM's (nothing after it can be located)."""
    order = "<" if little else ">"
    while pos + 8 <= size:
        fh.seek(pos)
        head = fh.read(8)
        group, elem = struct.unpack(order + "HH", head[:4])
        vr = None if implicit or group == _ITEM_GROUP else head[4:6]
        if vr is None:
            length, value = struct.unpack(order + "I", head[4:])[0], pos + 8
        elif vr in _VR32:
            if pos + 12 > size:
                return
            length, value = struct.unpack(order + "I", fh.read(4))[0], pos + 12
        else:
            length, value = struct.unpack(order + "H", head[6:])[0], pos + 8
        element = _Element(group, elem, vr, length, pos, value)
        yield element
        if (vr is not None and vr not in _VRS) or (group, elem) == _PIXEL_DATA:
            return
        if group == _ITEM_GROUP or length == _UNDEFINED or vr == b"SQ":
            if length == _UNDEFINED and vr not in (None, b"SQ"):
                return  # an undefined-length OB/UN: its content is not in this encoding
            pos = value  # an item's or a sequence's content is elements: walked in turn
        else:
            pos = value + length


def _check(element: _Element, size: int, src: str) -> None:
    if element.vr is not None and element.vr not in _VRS:
        raise InputError(
            f"{src}: cannot read DICOM file: element {element.tag} has no valid value representation "
            f"(VR {element.vr!r}; corrupt element header)"
        )
    if element.length != _UNDEFINED and element.value + element.length > size:
        raise InputError(
            f"{src}: cannot read DICOM file: element {element.tag} claims {element.length} bytes, the file "
            f"holds {max(size - element.value, 0)} after it (corrupt length or truncated file)"
        )


def _transfer_syntax(fh: BinaryIO, element: _Element, src: str) -> str:
    """The transfer syntax UID's value; one that is not a UID (a damaged value) is refused here, since GDCM
    would guess the encoding of the rest of the file from it."""
    fh.seek(element.value)
    uid = fh.read(min(element.length, 64)).rstrip(b"\x00 ").decode("latin-1")
    if not uid or len(uid) > 64 or any(not part.isdigit() for part in uid.split(".")):
        raise InputError(
            f"{src}: cannot read DICOM file: transfer syntax UID (0002,0010) {uid!r} is not a valid UID "
            "(corrupt file meta header)"
        )
    return uid


def _body_encoding(fh: BinaryIO, start: int, uid: str | None) -> tuple[bool, bool] | None:
    """(implicit VR, little endian) of the data set after the file meta group, None for a deflated one.
    Explicit or implicit VR is taken from the first element, as GDCM and pydicom do: some writers put an
    implicit-VR data set under an explicit-VR transfer syntax (pydicom's SC_rgb_jpeg.dcm)."""
    if uid in _DEFLATED:
        return None
    fh.seek(start + 4)
    return fh.read(2) not in _VRS, uid != _EXPLICIT_BE


def _pixel_bytes_needed(ds) -> int | None:
    """Bytes of native pixel data that Rows x Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated
    need; None where the header does not say (GDCM then refuses the file itself)."""
    try:
        n = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError, OverflowError):
        return None
    needed = (n * max(frames, 1) * bits + 7) // 8
    if str(ds.get("PhotometricInterpretation", "")).endswith("_422"):  # two chroma samples per 2 pixels
        needed = needed * 2 // 3
    return needed


def check_dicom_pixel_data(p: Path, src: str) -> None:
    """Refuse native (uncompressed) pixel data shorter than the image its header describes: GDCM returns
    such an image with the missing part filled from whatever its buffer held (a Columns of 65,535 over
    CT_small's 128 x 128 pixels was read as a 128 x 65,535 image) instead of failing."""
    import pydicom

    tags = [
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "NumberOfFrames",
        "BitsAllocated",
        "PhotometricInterpretation",
    ]
    tags.append("PixelData")
    try:
        ds = pydicom.dcmread(p, force=True, defer_size=_DEFER, specific_tags=tags)
        pixels = ds._dict.get(0x7FE00010)
        length = getattr(pixels, "length", None)
        needed = _pixel_bytes_needed(ds)
    except Exception:  # noqa: BLE001 - pydicom cannot read these fields: GDCM's own error names the cause
        return
    if length is None or length == _UNDEFINED or needed is None:
        return  # encapsulated (compressed) pixel data: its decoder checks the size
    if length < needed:
        raise InputError(
            f"{src}: cannot read DICOM file: the pixel data holds {length} bytes, its header's image size "
            f"(Rows x Columns x samples x frames x BitsAllocated) needs {needed} (corrupt header or "
            "truncated file)"
        )


def check_dicom_file(p: Path, src: str, strict: bool = True) -> None:
    """The checks GDCM needs before it sees a DICOM file: its element headers, then its pixel data's size.
    ``strict=False`` (a folder's files): only files with the DICM magic are checked, so that a stray
    non-DICOM file is left to GDCM's scan of the folder."""
    with open(p, "rb") as fh:
        has_magic = fh.read(_PREAMBLE + 4)[_PREAMBLE:] == b"DICM"
    if not strict and not has_magic:
        return
    check_dicom_elements(p, src, has_magic)
    check_dicom_pixel_data(p, src)


def check_dicom_elements(p: Path, src: str, has_magic: bool) -> None:
    """Refuse a DICOM file whose element headers would make GDCM allocate what the file does not hold: a
    length past the end of the file, an invalid VR, a damaged transfer syntax UID."""
    size = p.stat().st_size
    with open(p, "rb") as fh:
        start, uid = (_PREAMBLE + 4 if has_magic else 0), None
        if has_magic:  # the file meta group: explicit VR little endian whatever the transfer syntax
            for element in _elements(fh, start, size, implicit=False, little=True):
                if element.group != 2:
                    break
                _check(element, size, src)
                if (element.group, element.elem) == (2, 0x10):
                    uid = _transfer_syntax(fh, element, src)
                start = element.value + (0 if element.length == _UNDEFINED else element.length)
        encoding = _body_encoding(fh, start, uid)
        if encoding is None:
            return
        for element in _elements(fh, start, size, *encoding):
            _check(element, size, src)
