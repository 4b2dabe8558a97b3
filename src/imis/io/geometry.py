"""Physical geometry of an image: spacing, origin and direction, in SimpleITK's conventions.

Axis conventions (used everywhere in imis):

* **Arrays** are indexed the way ``SimpleITK.GetArrayFromImage`` returns them: a volume is ``(z, y, x)``
  (slice, row, column) and a 2D image is ``(y, x)`` or ``(y, x, c)`` for RGB. ``array[k, j, i]`` is the
  voxel at ITK index ``(i, j, k)``.
* **Geometry** is in SimpleITK's order, the reverse of the array's: ``spacing`` and ``origin`` are
  ``(x, y, z)`` (``(x, y)`` in 2D), in millimetres. ``direction`` is the ``ndim x ndim`` matrix whose
  *column* ``d`` is the physical direction of index axis ``d`` (rows are physical axes), stored as a tuple
  of row tuples; ``SimpleITK.Image.GetDirection()`` is this matrix flattened row by row.
* **Physical space** is ITK's **LPS** (+x towards the patient's Left, +y Posterior, +z Superior), as for
  DICOM. The physical point of ITK index ``idx`` (``(x, y, z)`` order) is
  ``origin + direction @ (spacing * idx)``, exactly ``Image.TransformContinuousIndexToPhysicalPoint``.
* **NIfTI** stores its affine in **RAS+** (+x Right, +y Anterior, +z Superior). SimpleITK converts on read
  and write by negating the first two physical axes, so a ``Geometry`` read from a ``.nii.gz`` is already
  LPS; :meth:`Geometry.affine_ras` gives the 4x4 affine nibabel would report for the same file
  (``diag(-1, -1, 1, 1) @ affine_lps``). Nothing is reoriented on read: voxels stay in file order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Geometry", "LPS_TO_RAS"]

#: Multiply an LPS point (or affine, on the left) by this to get RAS, and vice versa.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _floats(values: Sequence[float], name: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in np.asarray(values, dtype=np.float64).ravel())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Geometry.{name} must be numbers, got {values!r}") from exc
    return out


@dataclass(frozen=True)
class Geometry:
    """Spacing, origin and direction of a 2D image or 3D volume (SimpleITK order: x, y[, z]; LPS mm).

    ``spacing`` and ``origin`` have ``ndim`` entries; ``direction`` is ``ndim`` rows of ``ndim`` entries
    (column ``d`` = physical direction of index axis ``d``). Lists and numpy arrays are accepted and
    normalised to float tuples; a flat direction of ``ndim*ndim`` numbers (SimpleITK's layout) is
    accepted too.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        spacing = _floats(self.spacing, "spacing")
        origin = _floats(self.origin, "origin")
        n = len(spacing)
        if n not in (2, 3):
            raise ValueError(f"Geometry must be 2D or 3D, got spacing {spacing}")
        if len(origin) != n:
            raise ValueError(f"Geometry.origin {origin} must have {n} entries like spacing {spacing}")
        if not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise ValueError(f"Geometry.spacing must be finite and > 0, got {spacing}")
        if not all(np.isfinite(origin)):
            raise ValueError(f"Geometry.origin must be finite, got {origin}")
        flat = _floats(self.direction, "direction")
        if len(flat) != n * n:
            raise ValueError(f"Geometry.direction must be {n}x{n}, got {len(flat)} numbers")
        if not all(np.isfinite(flat)):
            raise ValueError(f"Geometry.direction must be finite, got {flat}")
        direction = tuple(tuple(flat[r * n : (r + 1) * n]) for r in range(n))
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def identity(cls, ndim: int, spacing: Sequence[float] | None = None) -> Geometry:
        """Unit (or given) spacing, zero origin, identity direction: the geometry of a plain array."""
        return cls(
            spacing=tuple(spacing) if spacing is not None else (1.0,) * ndim,
            origin=(0.0,) * ndim,
            direction=tuple(tuple(float(r == c) for c in range(ndim)) for r in range(ndim)),
        )

    @classmethod
    def from_sitk(cls, image) -> Geometry:
        """The geometry of a ``SimpleITK.Image`` (2D or 3D)."""
        return cls(spacing=image.GetSpacing(), origin=image.GetOrigin(), direction=image.GetDirection())

    def apply_to(self, image) -> None:
        """Set this geometry on a ``SimpleITK.Image`` of the same dimension (in place)."""
        if image.GetDimension() != self.ndim:
            raise ValueError(f"a {self.ndim}D geometry cannot be set on a {image.GetDimension()}D image")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.flat_direction)

    # -- views ----------------------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.spacing)

    @property
    def flat_direction(self) -> tuple[float, ...]:
        """Direction flattened row by row, as ``SimpleITK.Image.SetDirection`` takes it."""
        return tuple(v for row in self.direction for v in row)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.array(self.direction, dtype=np.float64)

    def affine_lps(self) -> np.ndarray:
        """``(ndim+1) x (ndim+1)`` affine mapping ITK index ``(x, y[, z], 1)`` to LPS millimetres."""
        n = self.ndim
        aff = np.eye(n + 1)
        aff[:n, :n] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        aff[:n, n] = self.origin
        return aff

    def affine_ras(self) -> np.ndarray:
        """4x4 voxel-to-RAS affine, as nibabel reports for a NIfTI written with this geometry (3D only)."""
        if self.ndim != 3:
            raise ValueError("affine_ras is defined for 3D geometries only")
        return LPS_TO_RAS @ self.affine_lps()

    def index_to_physical(self, index: Sequence[float]) -> tuple[float, ...]:
        """LPS point of a (continuous) ITK index given in ``(x, y[, z])`` order."""
        idx = np.asarray(index, dtype=np.float64)
        if idx.shape != (self.ndim,):
            raise ValueError(f"index must have {self.ndim} entries (x, y[, z]), got {tuple(index)}")
        pt = np.asarray(self.origin) + self.direction_matrix @ (np.asarray(self.spacing) * idx)
        return tuple(float(v) for v in pt)

    def physical_to_index(self, point: Sequence[float]) -> tuple[float, ...]:
        """Continuous ITK index ``(x, y[, z])`` of an LPS point (inverse of :meth:`index_to_physical`)."""
        pt = np.asarray(point, dtype=np.float64)
        if pt.shape != (self.ndim,):
            raise ValueError(f"point must have {self.ndim} entries, got {tuple(point)}")
        idx = np.linalg.solve(self.direction_matrix, pt - np.asarray(self.origin)) / np.asarray(self.spacing)
        return tuple(float(v) for v in idx)

    def allclose(self, other: Geometry, atol: float = 1e-5) -> bool:
        """Same dimension and spacing/origin/direction equal within ``atol``."""
        return (
            self.ndim == other.ndim
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction_matrix, other.direction_matrix, atol=atol)
        )
