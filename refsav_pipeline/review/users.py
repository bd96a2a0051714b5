"""Reviewer accounts: a text file of ``name:pbkdf2_sha256:iterations:salt_hex:hash_hex`` lines.

Only salted PBKDF2 hashes are stored (never passwords); the file is re-read at every login, so
``refsav review add-user`` takes effect without restarting the app.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path

from refsav_pipeline.pipeline.plan import write_atomic

ALGORITHM = "pbkdf2_sha256"
ITERATIONS = 600_000  # OWASP 2023 guidance for PBKDF2-HMAC-SHA256
NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """The stored form ``pbkdf2_sha256:<iterations>:<salt hex>:<hash hex>``."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{ALGORITHM}:{iterations}:{salt.hex()}:{digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        algorithm, iterations, salt_hex, hash_hex = stored.split(":")
        if algorithm != ALGORITHM:
            return False
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt_hex),
                                     int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(digest.hex(), hash_hex)


def read_users(path: str | Path) -> dict[str, str]:
    """name -> stored hash; blank lines and ``#`` comments ignored."""
    users: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        if not sep or not NAME_RE.match(name):
            raise ValueError(f"{path}:{n}: expected name:{ALGORITHM}:iterations:salt:hash")
        users[name] = stored
    return users


def add_user(path: str | Path, name: str, password: str, iterations: int = ITERATIONS) -> bool:
    """Add or replace ``name``; returns True if the user already existed. File mode 0600."""
    if not NAME_RE.match(name):
        raise ValueError(f"user name {name!r} must match {NAME_RE.pattern}")
    if not password:
        raise ValueError("empty password")
    path = Path(path)
    users = read_users(path) if path.exists() else {}
    existed = name in users
    users[name] = hash_password(password, iterations)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(f"{k}:{v}\n" for k, v in sorted(users.items())).encode())
    os.chmod(path, 0o600)
    return existed


def make_auth(path: str | Path):
    """The callable for ``launch(auth=...)``."""

    def check(username: str, password: str) -> bool:
        stored = read_users(path).get(username)
        return stored is not None and verify_password(password, stored)

    return check
