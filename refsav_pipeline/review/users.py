"""Reviewer accounts: a text file of ``name:pbkdf2_sha256:iterations:salt_hex:hash_hex[:role]``.

Only salted PBKDF2 hashes are stored (never passwords); the file is re-read at every login, so
``refsav review add-user`` takes effect without restarting the app. The role is ``reviewer``
(the default, and what a line without one means, so files written before roles stay readable)
or ``adjudicator`` (also settles disagreements on double-review samples).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel

from refsav_pipeline.pipeline.plan import write_atomic

ALGORITHM = "pbkdf2_sha256"
ITERATIONS = 600_000  # OWASP 2023 guidance for PBKDF2-HMAC-SHA256
NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
Role = Literal["reviewer", "adjudicator"]
ROLES: tuple[str, ...] = get_args(Role)


class Account(BaseModel):
    name: str
    stored: str  # pbkdf2_sha256:<iterations>:<salt hex>:<hash hex>
    role: Role = "reviewer"


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


def read_accounts(path: str | Path) -> dict[str, Account]:
    """name -> account; blank lines and ``#`` comments ignored."""
    accounts: dict[str, Account] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        parts = rest.split(":")
        if not sep or not NAME_RE.match(name) or len(parts) not in (4, 5) or (
                len(parts) == 5 and parts[4] not in ROLES):
            raise ValueError(f"{path}:{n}: expected name:{ALGORITHM}:iterations:salt:hash"
                             f"[:role], role one of {', '.join(ROLES)}")
        role = parts[4] if len(parts) == 5 else "reviewer"
        accounts[name] = Account(name=name, stored=":".join(parts[:4]), role=role)
    return accounts


def read_users(path: str | Path) -> dict[str, str]:
    """name -> stored hash."""
    return {name: a.stored for name, a in read_accounts(path).items()}


def role_of(path: str | Path | None, name: str) -> Role:
    """The role of ``name`` (``reviewer`` without a users file or for an unknown name)."""
    if path is None:
        return "reviewer"
    account = read_accounts(path).get(name)
    return account.role if account else "reviewer"


def add_user(path: str | Path, name: str, password: str, iterations: int = ITERATIONS,
             role: str | None = None) -> bool:
    """Add or replace ``name``; returns True if the user already existed. File mode 0600.
    ``role`` ``None`` keeps an existing user's role (``reviewer`` for a new one)."""
    if not NAME_RE.match(name):
        raise ValueError(f"user name {name!r} must match {NAME_RE.pattern}")
    if not password:
        raise ValueError("empty password")
    if role is not None and role not in ROLES:
        raise ValueError(f"role {role!r} must be one of {', '.join(ROLES)}")
    path = Path(path)
    accounts = read_accounts(path) if path.exists() else {}
    existed = name in accounts
    keep = accounts[name].role if existed else "reviewer"
    accounts[name] = Account(name=name, stored=hash_password(password, iterations),
                             role=role or keep)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(
        f"{a.name}:{a.stored}" + (f":{a.role}" if a.role != "reviewer" else "") + "\n"
        for a in sorted(accounts.values(), key=lambda a: a.name)).encode())
    os.chmod(path, 0o600)
    return existed


def _iterations(stored: str) -> int:
    try:
        return int(stored.split(":")[1])
    except (IndexError, ValueError):
        return ITERATIONS


def make_auth(path: str | Path):
    """The callable for ``launch(auth=...)``. An unknown name costs the same hashing as a
    known one (a dummy hash with the file's usual iteration count), so timing does not tell
    which names exist."""

    def check(username: str, password: str) -> bool:
        accounts = read_accounts(path)
        account = accounts.get(username)
        if account is None:
            rounds = max((_iterations(a.stored) for a in accounts.values()),
                         default=ITERATIONS)
            verify_password(password, f"{ALGORITHM}:{rounds}:{'00' * 16}:{'00' * 32}")
            return False
        return verify_password(password, account.stored)

    return check
