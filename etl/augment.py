"""Training-set augmentation of aligned faces and their landmarks (numpy/cv2, explicit Generators).

Landmarks follow etl/face.py: (x, y) pixels with pixel centres at integers, so a horizontal flip maps
x -> W - 1 - x (what cv2.flip does to the pixels). Every random draw comes from the caller's
``np.random.Generator``; the number of draws per call does not depend on the image content.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def _mirror_permutation_68() -> np.ndarray:
    """Index map of the iBUG 68 points under a horizontal flip (new[i] = old[perm[i]])."""
    pairs = (
        [(i, 16 - i) for i in range(8)]  # jaw 0..16 reversed, 8 = chin
        + [(17 + i, 26 - i) for i in range(5)]  # brows 17..21 <-> 26..22
        + [(31, 35), (32, 34)]  # nose base, 33 = tip; bridge 27..30 on the midline
        + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes, corner to corner
        + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer mouth; 51, 57 on the midline
        + [(60, 64), (61, 63), (65, 67)]  # inner mouth; 62, 66 on the midline
    )
    perm = np.arange(68)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


# Registry: landmark count -> left/right index permutation (dlib 5-point: eye corners 0,1 <-> 2,3).
MIRROR_PERMUTATIONS = {68: _mirror_permutation_68(), 5: np.array([2, 3, 0, 1, 4])}


def _mirror_permutation(count: int) -> np.ndarray:
    """The flip permutation for ``count`` landmarks."""
    if count not in MIRROR_PERMUTATIONS:
        raise KeyError(f"no flip permutation for {count} landmarks; known: {sorted(MIRROR_PERMUTATIONS)}")
    return MIRROR_PERMUTATIONS[count]


def hflip(image: np.ndarray, landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Mirror image and landmarks left-right, permuting indices so each landmark keeps its meaning."""
    flipped = np.ascontiguousarray(image[:, ::-1])
    if landmarks is None:
        return flipped, None
    pts = np.asarray(landmarks)
    # computed in float64: flipping twice is exact for float64 landmarks, within 1 ulp for float32
    mirrored = pts.astype(np.float64)
    mirrored[:, 0] = (image.shape[1] - 1) - mirrored[:, 0]
    dtype = pts.dtype if pts.dtype.kind == "f" else np.float32
    return flipped, mirrored[_mirror_permutation(len(pts))].astype(dtype)


def affine_points(landmarks: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (n, 2) points (float32)."""
    pts = np.asarray(landmarks, dtype=np.float64)
    return (pts @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def random_affine(
    image: np.ndarray,
    landmarks: np.ndarray | None,
    rng: np.random.Generator,
    max_rotation_deg: float = 10.0,
    scale_range: tuple[float, float] = (0.95, 1.05),
    max_shift: float = 0.0,
    border_mode: int = cv2.BORDER_REFLECT_101,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Random rotation/scale about the image centre, plus a shift (fraction of the side); landmarks follow."""
    height, width = image.shape[:2]
    angle = rng.uniform(-max_rotation_deg, max_rotation_deg)
    scale = rng.uniform(*scale_range)
    shift = rng.uniform(-max_shift, max_shift, size=2) * np.array([width, height])
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle, scale)
    matrix[:, 2] += shift
    warped = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=border_mode)
    return warped, None if landmarks is None else affine_points(landmarks, matrix)


def color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
) -> np.ndarray:
    """Random brightness, contrast and saturation factors in [1 - x, 1 + x]; uint8 in, uint8 out."""
    b, c, s = (rng.uniform(1.0 - x, 1.0 + x) for x in (brightness, contrast, saturation))
    out = image.astype(np.float32) * b
    if out.ndim == 3 and out.shape[2] == 3:
        grey = (out @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    else:
        grey = out
    out = (out - grey.mean()) * c + grey.mean()
    if out.ndim == 3 and out.shape[2] == 3:
        # saturation: blend with the luminance (a no-op on grey images stored as RGB)
        grey = (out @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        out = grey + (out - grey) * s
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the training-set augmentations."""

    hflip_p: float = 0.5
    affine_p: float = 0.5
    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.95, 1.05)
    max_shift: float = 0.02
    color_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def __post_init__(self):
        for name in ("hflip_p", "affine_p", "color_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"bad scale_range {self.scale_range}")


def augment(
    image: np.ndarray,
    landmarks: np.ndarray | None,
    rng: np.random.Generator,
    config: AugmentConfig = AugmentConfig(),
) -> tuple[np.ndarray, np.ndarray | None]:
    """Flip, affine-warp and colour-jitter an image (and its landmarks) as ``config`` says."""
    # Decide which steps run (always three draws), then draw their parameters
    do_flip, do_affine, do_color = rng.uniform(size=3) < (config.hflip_p, config.affine_p, config.color_p)
    if do_flip:
        image, landmarks = hflip(image, landmarks)
    if do_affine:
        image, landmarks = random_affine(
            image, landmarks, rng, config.max_rotation_deg, config.scale_range, config.max_shift
        )
    if do_color:
        image = color_jitter(image, rng, config.brightness, config.contrast, config.saturation)
    return image, landmarks
