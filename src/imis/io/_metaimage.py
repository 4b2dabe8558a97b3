"""MetaImage (``.mha``/``.mhd``) header checks made in Python before ITK's MetaIO sees a file.

MetaIO trusts its header: it indexes its arrays by ``NDims`` unchecked (NDims = 1e308 or a DimSize with
fewer values than NDims is a segmentation fault), allocates ``CompressedDataSize`` bytes unchecked (-1 is a
std::bad_alloc), and passes an ``ElementDataFile`` holding a ``%`` straight to ``snprintf`` as a file-name
pattern (a name such as ``LO\\xcf%^M*...``, from a few flipped bits, is a format-string bug: heap
corruption and an abort). It also returns the image of a corrupt compressed stream with only a warning.
So the header is parsed and checked here first (:func:`check_metaimage_header`), and the data is checked
against it once ITK has read the header (:func:`check_metaimage`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from imis.errors import InputError
from imis.io._integrity import _inflate
from imis.io.limits import check_deflate, check_present

_HEAD_BYTES = 1 << 16  # a header longer than this is not a MetaImage header
_NDIM_FIELDS = tuple("dimsize elementspacing elementsize offset origin position centerofrotation".split())
_MATRIX_FIELDS = ("transformmatrix", "rotation", "orientation")
_INT_FIELDS = ("ndims", "elementnumberofchannels", "headersize", "compresseddatasize")
#: The element types of image voxels (MetaIO also knows strings, arrays and matrices, which ITK reads as
#: meaningless pixel types).
ELEMENT_TYPES = frozenset(
    "MET_" + t
    for t in "CHAR UCHAR SHORT USHORT INT UINT LONG ULONG LONG_LONG ULONG_LONG FLOAT DOUBLE".split()
)
#: A file-name pattern of a slice-per-file data set: one integer conversion (``slice%03d.raw``).
_PATTERN = re.compile(r"[^%]*%0?\d{0,3}d[^%]*")


@dataclass(frozen=True)
class MetaHeader:
    fields: dict[str, str]  # lower-cased key -> stripped value, up to ElementDataFile
    text_bytes: int  # bytes of header text, up to and including the ElementDataFile line
    complete: bool  # the ElementDataFile line was reached

    @property
    def data_file(self) -> str:
        return self.fields.get("elementdatafile", "")

    @property
    def local(self) -> bool:
        return self.data_file.upper() == "LOCAL"

    @property
    def detached(self) -> bool:
        """One data file beside the header (not LOCAL, not a LIST or a pattern of slice files)."""
        name = self.data_file
        return bool(name) and not self.local and not name.upper().startswith("LIST") and "%" not in name


def read_header(p: Path) -> MetaHeader:
    """The ``Key = value`` lines at the start of ``p``, up to ``ElementDataFile`` (MetaIO's last field)."""
    with open(p, "rb") as fh:
        head = fh.read(_HEAD_BYTES)
    fields: dict[str, str] = {}
    offset = 0
    for raw in head.splitlines(keepends=True):
        key, sep, value = raw.decode("latin-1").partition("=")
        if not sep:
            break
        offset += len(raw)
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            return MetaHeader(fields, offset, True)
    return MetaHeader(fields, offset, False)


def _numbers(text: str) -> list[float] | None:
    try:
        return [float(v) for v in text.split()]
    except ValueError:
        return None


def _bad_shape_field(fields: dict[str, str]) -> str | None:
    """A field MetaIO would read past its arrays on (NDims, per-dimension lists) or allocate from."""
    for key in _INT_FIELDS:
        if key in fields and not re.fullmatch(r"-?\d{1,9}", fields[key]):
            return f"{key} = {fields[key][:60]!r} is not an integer"
    ndims = int(fields.get("ndims", "0"))
    if not 1 <= ndims <= 6:
        return f"NDims = {fields.get('ndims')!r} (1 to 6 dimensions are readable)"
    if not 1 <= int(fields.get("elementnumberofchannels", "1")) <= 64:
        return f"ElementNumberOfChannels = {fields['elementnumberofchannels']!r} (1 to 64)"
    for key in _NDIM_FIELDS + _MATRIX_FIELDS:
        if key not in fields:
            continue
        values = _numbers(fields[key])
        want = ndims * ndims if key in _MATRIX_FIELDS else ndims
        if values is None or len(values) != want:
            return f"{key} = {fields[key][:60]!r} does not hold {want} numbers for NDims = {ndims}"
        if key == "dimsize" and not all(math.isfinite(v) and v >= 1 and v == int(v) for v in values):
            return f"DimSize = {fields[key][:60]!r} is not {ndims} sizes >= 1"
    if "dimsize" not in fields:
        return "no DimSize line"
    element = fields.get("elementtype", "")
    if element not in ELEMENT_TYPES:
        return f"ElementType = {element[:40]!r} is not a voxel type ({', '.join(sorted(ELEMENT_TYPES))})"
    return None


def _bad_data_file(header: MetaHeader) -> str | None:
    """An ElementDataFile that is no file name, or a slice pattern that MetaIO's snprintf would misread."""
    name = header.data_file
    if not name:
        return "ElementDataFile is empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"ElementDataFile = {name[:40]!r} holds control characters (not a file name)"
    if "%" not in name:
        return None
    words = name.split()
    if not _PATTERN.fullmatch(words[0]):
        return f"ElementDataFile = {name[:60]!r} is not a file pattern with one integer field (%d)"
    ints = [int(w) for w in words[1:] if re.fullmatch(r"-?\d{1,9}", w)]
    if len(ints) != len(words) - 1 or len(ints) not in (0, 3):
        # 'first last' without a step is a division by zero in MetaIO (SIGFPE)
        return f"ElementDataFile = {name[:60]!r}: a pattern takes the integers 'first last step'"
    if ints:
        first, last, step = ints
        slices = int(float(header.fields["dimsize"].split()[-1]))
        # MetaIO reads first, first + step, ... while <= last: a step < 1 reads nothing (or never ends)
        if step < 1 or not 1 <= (last - first) // step + 1 <= slices:
            return f"ElementDataFile = {name[:60]!r} names other than 1 to {slices} slice files"
    return None


def _data_target(header: MetaHeader, p: Path) -> Path:
    return p if not header.detached else p.parent / header.data_file


def check_metaimage_header(p: Path, src: str) -> None:
    """Refuse a MetaImage header that ITK's MetaIO would crash on or misread: NDims, the per-dimension
    fields, channels, element type, HeaderSize, CompressedDataSize and ElementDataFile. Called before ITK
    sees the file."""
    header = read_header(p)
    if "ndims" not in header.fields:
        raise InputError(f"{src}: cannot read MetaImage file: its header has no NDims line")
    if not header.complete:
        raise InputError(f"{src}: cannot read MetaImage file: its header has no ElementDataFile line")
    bad = _bad_shape_field(header.fields) or _bad_data_file(header)
    if bad is None:
        bad = _bad_sizes(header, p)
    if bad is not None:
        raise InputError(f"{src}: cannot read MetaImage file: corrupt header ({bad})")


def _bad_sizes(header: MetaHeader, p: Path) -> str | None:
    """HeaderSize / CompressedDataSize beyond the data they describe."""
    fields = header.fields
    target = _data_target(header, p)
    if header.detached and not target.is_file():
        return None  # check_metaimage names the missing data file
    size = target.stat().st_size
    if "compresseddatasize" in fields and not 1 <= int(fields["compresseddatasize"]) <= size:
        # ITK allocates CompressedDataSize bytes unchecked: -1 is a std::bad_alloc
        return f"CompressedDataSize = {fields['compresseddatasize']} for {size} bytes of data"
    if "headersize" in fields and not -1 <= int(fields["headersize"]) <= size:
        return f"HeaderSize = {fields['headersize']} for {size} bytes of data (-1 to {size})"
    return None


def _data_offset(header: MetaHeader, n_bytes: int, size: int, src: str) -> int:
    """Where the voxel data starts in its file: after the header text (LOCAL), at HeaderSize, or (-1)
    ``n_bytes`` before the end."""
    skip = int(header.fields.get("headersize", "0"))
    compressed = header.fields.get("compresseddata", "").lower() == "true"
    if skip == -1:
        if compressed:  # MetaIO cannot locate compressed data from the end
            raise InputError(f"{src}: cannot read MetaImage file: HeaderSize = -1 with compressed data")
        return max(size - n_bytes, 0)
    if skip > 0:
        return skip
    return header.text_bytes if header.local else 0


_MAX_SLICE_FILES = 100_000


def _slice_files(header: MetaHeader, p: Path) -> list[Path] | None:
    """The files of multi-file data: the lines after ``ElementDataFile = LIST``, or the names a checked
    pattern (``slice%03d.raw first last step``) makes; None for a pattern without a range (ITK reports
    it)."""
    words = header.data_file.split()
    if words[0].upper().startswith("LIST"):
        with open(p, "rb") as fh:
            fh.seek(header.text_bytes)
            lines = fh.read(1 << 22).decode("latin-1").splitlines()
        return [p.parent / ln.strip() for ln in lines[:_MAX_SLICE_FILES] if ln.strip()]
    if len(words) != 4:
        return None
    first, last, step = (int(w) for w in words[1:])
    return [p.parent / (words[0] % i) for i in range(first, last + 1, step)]


def _check_slice_files(header: MetaHeader, p: Path, src: str, n_bytes: int) -> None:
    """Every listed slice file present and, together, enough data: ITK fills what a short or missing list
    lacks with whatever its buffer held, and returns the image."""
    files = _slice_files(header, p)
    if files is None:
        return
    if not files:
        raise InputError(f"{src}: cannot read MetaImage file: ElementDataFile = LIST names no data files")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise InputError(
            f"{src}: cannot read MetaImage file: {len(missing)} of its {len(files)} data files are missing "
            f"(first: {missing[0].name!r})"
        )
    available = sum(f.stat().st_size for f in files)
    if header.fields.get("compresseddata", "").lower() == "true":
        check_deflate(src, n_bytes, available, f"MetaImage file ({len(files)} data files)")
    else:
        check_present(src, n_bytes, available, f"MetaImage file ({len(files)} data files)")


def check_metaimage(p: Path, src: str, n_bytes: int) -> None:
    """Raise InputError if a MetaImage header names a missing data file, if its data cannot hold the
    ``n_bytes`` its header claims (uncompressed data shorter than that, compressed data more than 1032
    times smaller), or if its compressed data (``.mha``, or ``.mhd`` + ``.zraw``) is a corrupt or
    incomplete zlib stream. For multi-file data (LIST, slice patterns) every file must be there and hold,
    together, what the header claims."""
    header = read_header(p)
    if not header.complete:
        return
    if not (header.local or header.detached):
        _check_slice_files(header, p, src, n_bytes)
        return
    target = _data_target(header, p)
    if not target.is_file():
        raise InputError(f"{src}: cannot read MetaImage file: its data file {target} does not exist")
    size = target.stat().st_size
    offset = _data_offset(header, n_bytes, size, src)
    available = size - offset
    if header.fields.get("compresseddata", "").lower() != "true":
        check_present(src, n_bytes, available, "MetaImage file")
        return
    check_deflate(src, n_bytes, available, "MetaImage file")
    name = src if target == p else f"{src} (data file {target.name})"
    for _ in _inflate(target, name, "MetaImage", offset=offset, gzip=False):
        pass
