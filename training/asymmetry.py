"""Facial asymmetry from 68 dlib landmarks: the static quantities facial-paralysis grading is built on.

Landmarks follow dlib's iBUG 68-point order, (x, y) image pixels. Sides are the SUBJECT's: in a
non-mirrored frontal photo the subject's right eye is dlib's 36-41 (on the image's left) and the
subject's left eye is 42-47; likewise brows 17-21 (right) / 22-26 (left) and mouth corners 48 (right)
/ 54 (left). A mirrored photo (a front camera's selfie) swaps the sides, so every signed measure
changes sign (the eye ratio inverts) and the magnitudes stay the same.

Face frame: the facial midline is the least-squares line through the nose bridge (27-30) and the chin
(8); "down" runs along it from the nasion towards the chin, "across" is perpendicular to it and points
from the subject's right to their left. Heights are measured against "down", lateral distances from
the midline along "across". Every length is divided by the inter-ocular distance (IOD, between the
means of the two eyes' six points), so the measures do not depend on image size, position or roll.

Signed measures, each "subject's left minus subject's right" (0 = symmetric), except the ratio:
  eye_aperture_ratio        left / right eye aperture (mean of the two upper-to-lower lid distances); 1 = symmetric
  mouth_corner_height_diff  height of the left mouth corner (54) above the right one (48)
  mouth_excursion_diff      lateral distance of the left corner from the midline minus the right one's
  brow_height_diff          left brow's height above its eye minus the right brow's (brow and eye = point means)
`asymmetry_magnitude` turns them into unsigned sizes for averaging over faces, 0 = symmetric for
every measure: the ratio becomes 1 - smaller/larger aperture (1 = one eye shut), the differences
their absolute values.
"""

from __future__ import annotations

import numpy as np

MEASURES = ("eye_aperture_ratio", "mouth_corner_height_diff", "mouth_excursion_diff", "brow_height_diff")

# iBUG 68 indices, by the subject's side.
RIGHT_EYE, LEFT_EYE = np.arange(36, 42), np.arange(42, 48)
RIGHT_BROW, LEFT_BROW = np.arange(17, 22), np.arange(22, 27)
RIGHT_MOUTH_CORNER, LEFT_MOUTH_CORNER = 48, 54
MIDLINE = np.array([27, 28, 29, 30, 8])
# Upper and lower lid points of each eye, paired vertically.
_RIGHT_LIDS = ((37, 41), (38, 40))
_LEFT_LIDS = ((43, 47), (44, 46))


def _as_points(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) float64 landmarks, or a ValueError."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim < 2 or pts.shape[-2:] != (68, 2):
        raise ValueError(f"expected (..., 68, 2) landmarks, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("landmarks contain non-finite values")
    return pts


def face_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(origin, down, across, iod) of each face: midline point, unit axes (..., 2), IOD (...)."""
    pts = _as_points(landmarks)
    mid = pts[..., MIDLINE, :]
    origin = mid.mean(axis=-2)
    # The midline's direction: principal axis of its points, oriented from the nasion to the chin.
    centred = mid - origin[..., None, :]
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    down = vt[..., 0, :]
    flip = np.sign(np.einsum("...i,...i->...", pts[..., 8, :] - pts[..., 27, :], down))
    down = down * np.where(flip == 0, 1.0, flip)[..., None]
    across = np.stack([-down[..., 1], down[..., 0]], axis=-1)  # down rotated by -90 degrees
    right_eye, left_eye = pts[..., RIGHT_EYE, :].mean(axis=-2), pts[..., LEFT_EYE, :].mean(axis=-2)
    side = np.sign(np.einsum("...i,...i->...", left_eye - right_eye, across))
    across = across * np.where(side == 0, 1.0, side)[..., None]
    iod = np.linalg.norm(left_eye - right_eye, axis=-1)
    if np.any(iod <= 0):
        raise ValueError("the two eyes coincide: no inter-ocular distance to normalise by")
    return origin, down, across, iod


def _aperture(pts: np.ndarray, lids: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Mean upper-to-lower lid distance of one eye."""
    return np.mean([np.linalg.norm(pts[..., up, :] - pts[..., low, :], axis=-1) for up, low in lids], axis=0)


def measure_asymmetry(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """The signed MEASURES of (68, 2) or (N, 68, 2) landmarks; scalars become 0-d arrays."""
    pts = _as_points(landmarks)
    origin, down, across, iod = face_frame(pts)

    def height(p: np.ndarray) -> np.ndarray:
        return -np.einsum("...i,...i->...", p - origin, down) / iod

    def lateral(p: np.ndarray) -> np.ndarray:
        return np.einsum("...i,...i->...", p - origin, across) / iod

    # Eye apertures (IOD units; the ratio does not depend on the unit).
    right_ap, left_ap = _aperture(pts, _RIGHT_LIDS) / iod, _aperture(pts, _LEFT_LIDS) / iod
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(right_ap > 0, left_ap / np.where(right_ap > 0, right_ap, 1.0),
                         np.where(left_ap > 0, np.inf, 1.0))

    # Mouth corners: height and lateral distance from the midline.
    right_corner, left_corner = pts[..., RIGHT_MOUTH_CORNER, :], pts[..., LEFT_MOUTH_CORNER, :]
    corner_height = height(left_corner) - height(right_corner)
    excursion = lateral(left_corner) - (-lateral(right_corner))  # distances: the right corner lies at -lateral

    # Brows above their eyes.
    def brow_above_eye(brow: np.ndarray, eye: np.ndarray) -> np.ndarray:
        return height(pts[..., brow, :].mean(axis=-2)) - height(pts[..., eye, :].mean(axis=-2))

    brow = brow_above_eye(LEFT_BROW, LEFT_EYE) - brow_above_eye(RIGHT_BROW, RIGHT_EYE)
    return {
        "eye_aperture_ratio": np.asarray(ratio),
        "mouth_corner_height_diff": np.asarray(corner_height),
        "mouth_excursion_diff": np.asarray(excursion),
        "brow_height_diff": np.asarray(brow),
    }


def asymmetry_magnitude(measures: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Unsigned asymmetry, 0 = symmetric: eye ratio as 1 - smaller/larger aperture, the differences as |value|."""
    unknown = set(measures) - set(MEASURES)
    if unknown:
        raise KeyError(f"unknown asymmetry measures {sorted(unknown)}; known: {list(MEASURES)}")
    out = {}
    for name, value in measures.items():
        value = np.asarray(value, dtype=np.float64)
        if name == "eye_aperture_ratio":
            with np.errstate(divide="ignore"):
                out[name] = 1.0 - np.where(value > 1, 1.0 / value, value)  # inf (one eye shut) -> 1
        else:
            out[name] = np.abs(value)
    return out
