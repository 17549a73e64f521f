"""Face alignment to a canonical 5-point template, and pasting an aligned face back into its photo.

Template: the mean dlib 5-point shape of 568 detected faces (the bundled sample plus the first 400
images of the full expression set), expressed in units of the inter-ocular distance (IOD, between the
eye centres = midpoints of each eye's two corners) and made left/right symmetric, then placed with the
eye line at y = EYE_LINE_Y and IOD = EYE_DISTANCE of the crop side. In those units the same faces have
the brow tops at -0.38 IOD, the chin at +1.77 IOD (95th percentile +2.04, open mouths) and the jaw
corners at +-1.17 IOD, so the crop holds the whole face: brows at y ~0.26, chin at ~0.90 (open mouths
~0.98), jaw at x ~0.15..0.85, i.e. a bit of margin, like the RaFD-style crops StarGAN is trained on
(CelebA's 128 px crops are looser, IOD ~0.22, more hair and background). The photos of the expression
sets are tighter still: a median 26% of a crop (10-90%: 14-39%) lies outside the photo (see BORDERS).

Coordinates follow etl/face.py: pixel centres at integers. A normalised template point u in [0, 1]
maps to pixel ``u * size - 0.5``, so the template is exactly scale-consistent between sizes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from etl.face import (
    DEFAULT_POLICY,
    Box,
    FacePolicy,
    as_rgb,
    find_face,
    landmarks_5,
    landmarks_68,
    upscale_small,
)

logger = logging.getLogger(__name__)

EYE_LINE_Y = 0.37
EYE_DISTANCE = 0.30

# Mean dlib 5-point shape, IOD units, origin at the midpoint of the eye centres, x to the image right.
# Order as dlib's shape_predictor_5: image-right eye outer, inner; image-left eye outer, inner; nose bottom.
_MEAN_SHAPE_5_IOD = np.array(
    [[0.698, -0.006], [0.302, 0.006], [-0.698, -0.006], [-0.302, 0.006], [0.0, 0.760]], dtype=np.float64
)

# Canonical template in normalised [0, 1] crop coordinates, same order.
TEMPLATE_5 = (np.array([0.5, EYE_LINE_Y]) + EYE_DISTANCE * _MEAN_SHAPE_5_IOD).astype(np.float32)

# Landmark-to-box relation of the HOG detector (median over the sample's detections): box centre
# offset and side in units of s = IOD + |mouth centre - eye midpoint|, relative to the point halfway
# between the eye midpoint and the mouth centre. Used to refine whole-image boxes.
_BOX_FROM_LANDMARKS = (0.004, -0.031, 1.10, 1.09)


# How align_face fills crop pixels that lie outside the photo ("blur": replicate, then blur; see warp_face).
BORDERS = {
    "blur": cv2.BORDER_REPLICATE,
    "reflect": cv2.BORDER_REFLECT_101,
    "replicate": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
}


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """An aligned face: image (size, size, 3) uint8, 68 landmarks in its pixels, original->aligned matrix."""

    image: np.ndarray
    landmarks: np.ndarray  # float32 (68, 2), aligned-image pixel coordinates
    matrix: np.ndarray  # float64 (2, 3), original-image pixels -> aligned-image pixels
    box: Box  # the face box in the original image (source "hog" or "whole_image")
    valid_fraction: float  # share of the aligned crop that lies inside the original photo
    eye_error: float  # max distance of the 68-point eye centres from the template's, in template IODs

    @property
    def size(self) -> int:
        """Side of the aligned image in pixels."""
        return int(self.image.shape[0])


def template_points(size: int) -> np.ndarray:
    """The 5-point template in pixel coordinates of a size x size crop (float64 (5, 2))."""
    return TEMPLATE_5.astype(np.float64) * size - 0.5


def template_eye_centers(size: int) -> np.ndarray:
    """Template eye centres in pixels: row 0 the image-left eye (68-pt 36-41), row 1 the image-right."""
    pts = template_points(size)
    return np.stack([(pts[2] + pts[3]) / 2.0, (pts[0] + pts[1]) / 2.0])


def similarity_transform(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, scale, shift) mapping src to dst points (Umeyama); (2, 3)."""
    src = np.asarray(src_pts, dtype=np.float64)
    dst = np.asarray(dst_pts, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two matching (n>=2, 2) point sets, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 0:
        raise ValueError("source points are all identical")
    cov = dst_c.T @ src_c / len(src)
    u, sing, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # no reflections
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sing * d).sum() / src_var
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = dst_mean - scale * rot @ src_mean
    return matrix


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (n, 2) points (float32)."""
    pts = np.asarray(points, dtype=np.float64)
    return (pts @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]).astype(np.float32)


def warp_face(
    rgb: np.ndarray, matrix: np.ndarray, size: int, border: str = "blur"
) -> tuple[np.ndarray, np.ndarray]:
    """Warp an image into a size x size crop; returns (crop, float32 coverage of the photo in [0, 1])."""
    if border not in BORDERS:
        raise KeyError(f"unknown border {border!r}; known: {sorted(BORDERS)}")
    matrix = np.asarray(matrix, dtype=np.float64)
    coverage = cv2.warpAffine(
        np.ones(rgb.shape[:2], np.float32), matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0
    )
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 1.0:
        # warpAffine samples bilinearly without prefiltering: shrink with INTER_AREA first, so the
        # remaining warp is (almost) a pure rotation at scale 1
        shrink = max(scale, 1.0 / 16.0)
        width = max(1, int(round(rgb.shape[1] * shrink)))
        height = max(1, int(round(rgb.shape[0] * shrink)))
        fx, fy = width / rgb.shape[1], height / rgb.shape[0]
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        # resized pixel x' = (x + 0.5) * fx - 0.5, so x = (x' + 0.5) / fx - 0.5
        back = np.array([[1.0 / fx, 0.0, 0.5 / fx - 0.5], [0.0, 1.0 / fy, 0.5 / fy - 0.5], [0.0, 0.0, 1.0]])
        matrix = matrix @ back
        flags = cv2.INTER_LINEAR
    else:
        flags = cv2.INTER_CUBIC
    crop = cv2.warpAffine(rgb, matrix, (size, size), flags=flags, borderMode=BORDERS[border])
    if border == "blur" and coverage.min() < 0.5:
        # fade the replicated edge into a heavy blur with the distance from the photo
        outside = (coverage < 0.5).astype(np.uint8)
        dist = cv2.distanceTransform(outside, cv2.DIST_L2, 3)
        weight = np.clip(dist / (0.08 * size), 0.0, 1.0)[..., None]
        blurred = cv2.GaussianBlur(crop, (0, 0), sigmaX=0.06 * size)
        crop = np.clip(np.rint(crop * (1.0 - weight) + blurred * weight), 0, 255).astype(np.uint8)
    return crop, coverage


def box_from_landmarks(landmarks68: np.ndarray, source: str = "hog") -> Box:
    """A HOG-detector-like box for 68 landmarks (used to refine whole-image boxes)."""
    pts = np.asarray(landmarks68, dtype=np.float64)
    eye_mid = (pts[36:42].mean(axis=0) + pts[42:48].mean(axis=0)) / 2.0
    iod = float(np.linalg.norm(pts[42:48].mean(axis=0) - pts[36:42].mean(axis=0)))
    mouth = pts[48:68].mean(axis=0)
    unit = iod + float(np.linalg.norm(mouth - eye_mid))
    dx, dy, w, h = _BOX_FROM_LANDMARKS
    cx, cy = (eye_mid + mouth) / 2.0 + np.array([dx, dy]) * unit
    half_w, half_h = max(w * unit / 2.0, 1.0), max(h * unit / 2.0, 1.0)
    return Box(
        int(round(cx - half_w + 0.5)), int(round(cy - half_h + 0.5)),
        int(round(cx + half_w + 0.5)), int(round(cy + half_h + 0.5)), source,
    )


def align_face(
    rgb: np.ndarray,
    size: int = 128,
    policy: FacePolicy = DEFAULT_POLICY,
    border: str = "blur",
) -> AlignedFace:
    """Find the face under ``policy`` and warp it onto the 5-point template; raises FaceRejected.

    Landmarks are fitted on the original photo (upscaled when its shorter side is below
    ``policy.min_detect_side``) and mapped with the same matrix as the pixels, rather than re-fitted
    on the crop: they use the photo's full resolution, are identical (up to scale) for every crop
    size, and are exactly consistent with ``matrix`` for paste_back. ``border`` fills the parts of
    the crop outside the photo (many sources are tight crops): "blur" (default) replicates the edge
    and fades it into a heavy blur; "reflect" mirrors (ghost half-faces appear beside tight crops),
    "replicate" streaks, "constant" is black wedges the GAN would learn. See BORDERS.
    """
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rgb = as_rgb(rgb)
    box = find_face(rgb, policy)

    # Fit landmarks on the working image (small photos upscaled for sub-pixel precision)
    work, factor = upscale_small(rgb, policy.min_detect_side)
    work_box = box.scaled(factor)
    if box.source == "whole_image":
        logger.debug("no face detected in %dx%d image: fitting the whole image", *rgb.shape[1::-1])
        # the whole image is a poor initial box for the shape predictors: refit on a box derived
        # from a first fit (cut the median landmark error vs. detector boxes by ~35% on the sample)
        work_box = box_from_landmarks(landmarks_68(work, work_box), box.source)
    pts5 = landmarks_5(work, work_box)
    pts68 = landmarks_68(work, work_box)

    # Original pixels -> working pixels -> aligned pixels
    shift = 0.5 * factor - 0.5  # resize maps pixel centres x -> (x + 0.5) * factor - 0.5
    to_work = np.array([[factor, 0.0, shift], [0.0, factor, shift], [0.0, 0.0, 1.0]])
    work_to_aligned = similarity_transform(pts5, template_points(size))
    matrix = work_to_aligned @ to_work

    image, inside = warp_face(rgb, matrix, size, border)
    landmarks = transform_points(pts68, work_to_aligned)

    # Fit quality: the 5- and 68-point fits disagree on profiles and blurred faces (~0.04 typical,
    # > 0.3 for failed fits on the sample); a cheap quarantine signal for the ETL
    eyes = np.stack([landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)])
    template_eyes = template_eye_centers(size)
    iod = float(np.linalg.norm(template_eyes[1] - template_eyes[0]))
    eye_error = float(np.linalg.norm(eyes - template_eyes, axis=1).max() / iod)
    return AlignedFace(
        image=image,
        landmarks=landmarks,
        matrix=matrix,
        box=box,
        valid_fraction=float((inside >= 0.5).mean()),
        eye_error=eye_error,
    )


def face_mask(size: int, feather: float = 0.08) -> np.ndarray:
    """Feathered elliptical face mask for a size x size aligned crop, float32 in [0, 1]."""
    # the ellipse spans brows/forehead to chin and jaw to jaw of the template face
    center = (0.5 * size - 0.5, 0.57 * size - 0.5)
    axes = np.array([0.38 * size, 0.40 * size])
    margin = feather * size
    mask = np.zeros((size, size), np.float32)
    inner = np.maximum(axes - margin, 1.0)
    cv2.ellipse(mask, (center, tuple(2 * inner), 0.0), 1.0, thickness=-1, lineType=cv2.LINE_AA)
    if margin > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=margin / 2.0)
    return np.clip(mask, 0.0, 1.0)


def paste_back(
    original_rgb: np.ndarray,
    face_rgb: np.ndarray,
    matrix: np.ndarray,
    feather: float = 0.08,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Blend an aligned (e.g. translated) face back into its original photo with a feathered mask.

    ``matrix`` is AlignedFace.matrix (original -> aligned) and ``face_rgb`` must have the size it was
    computed for (resize a generator output first). ``mask`` (size x size, [0, 1]) overrides the default
    ellipse from face_mask(size, feather). Returns a new uint8 RGB image; pixels outside the mask are
    the original's.
    """
    original = as_rgb(original_rgb)
    face = as_rgb(face_rgb)
    size = face.shape[0]
    if face.shape[1] != size:
        raise ValueError(f"expected a square aligned face, got {face.shape}")
    height, width = original.shape[:2]
    weights = face_mask(size, feather) if mask is None else np.asarray(mask, np.float32)
    if weights.shape != (size, size):
        raise ValueError(f"mask shape {weights.shape} does not match the face size {size}")

    # Aligned -> original: warp the face and its mask
    inverse = cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))
    face_back = cv2.warpAffine(
        face, inverse, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    alpha = cv2.warpAffine(weights, inverse, (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0)
    alpha = alpha[..., None]

    blended = original.astype(np.float32) * (1.0 - alpha) + face_back.astype(np.float32) * alpha
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
