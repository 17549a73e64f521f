"""Salted-hash pseudonyms for subject ids and file names, and the salt file that keeps them stable."""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_SALT_FILE = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "palsygan" / "salt"


def load_or_create_salt(path: Path = DEFAULT_SALT_FILE) -> bytes:
    """The secret salt in ``path``; a new random one (mode 0600) when the file does not exist."""
    path = Path(path)
    if path.exists():
        salt = path.read_bytes().strip()
        if len(salt) < 32:
            raise ValueError(f"salt file {path} holds {len(salt)} bytes; at least 32 are required")
        return salt
    path.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(salt)
    log.info("created a new pseudonym salt in %s (keep it secret and keep it: it makes pseudonyms stable)", path)
    return salt


def pseudonym(value: str, salt: bytes, prefix: str) -> str:
    """``prefix`` + the first 16 hex digits of HMAC-SHA256(salt, value): stable, not reversible without salt."""
    return prefix + hmac.new(salt, value.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def scrub(text: str, path: str, source_id: str) -> str:
    """Replace a file's name (full relative path and base name) in a message by its pseudonym."""
    for name in sorted({path, path.rsplit("/", 1)[-1]}, key=len, reverse=True):
        if name:
            text = text.replace(name, source_id)
    return text
