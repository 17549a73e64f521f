"""Deterministic train/val/test assignment by subject, so that no person is in two splits."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from schemas.faces import SPLITS


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of subjects per split and the seed that fixes the assignment."""

    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if not (0 <= self.val_fraction and 0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"val ({self.val_fraction}) and test ({self.test_fraction}) fractions must be >= 0 "
                             f"and leave room for a training split")


def assign_split(subject: str, config: SplitConfig) -> str:
    """The split of one subject: a uniform draw from a hash of (seed, subject), independent of other subjects."""
    digest = hashlib.sha256(f"{config.seed}:{subject}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < config.test_fraction:
        return SPLITS[2]
    if u < config.test_fraction + config.val_fraction:
        return SPLITS[1]
    return SPLITS[0]
