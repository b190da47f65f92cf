"""The admin and enrollment tokens, and how secrets are compared.

Tokens come from ``EDGEFLEET_ADMIN_TOKEN`` / ``EDGEFLEET_ENROLL_TOKEN`` when set;
otherwise they are generated once, kept (mode 0600) in the data dir so a restart
keeps them, and their location is printed. Device credentials are never stored,
only their sha256, so a leaked Redis dump cannot impersonate devices.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from coordinator.errors import Unauthenticated

ADMIN_TOKEN_ENV = "EDGEFLEET_ADMIN_TOKEN"
ENROLL_TOKEN_ENV = "EDGEFLEET_ENROLL_TOKEN"
ADMIN_TOKEN_FILE = "admin.token"
ENROLL_TOKEN_FILE = "enroll.token"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secrets_match(given: str, expected: str) -> bool:
    """Constant-time comparison, so response timing leaks nothing about the secret."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _load_or_create(path: Path) -> str:
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = new_secret()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


@dataclass(frozen=True)
class Tokens:
    admin: str
    enroll: str
    admin_source: str  # where the operator finds it: env var name or file path
    enroll_source: str

    @classmethod
    def load(cls, data_dir: Path) -> Tokens:
        admin_env = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
        enroll_env = os.environ.get(ENROLL_TOKEN_ENV, "").strip()
        admin_file = data_dir / ADMIN_TOKEN_FILE
        enroll_file = data_dir / ENROLL_TOKEN_FILE
        return cls(
            admin=admin_env or _load_or_create(admin_file),
            enroll=enroll_env or _load_or_create(enroll_file),
            admin_source=f"${ADMIN_TOKEN_ENV}" if admin_env else str(admin_file),
            enroll_source=f"${ENROLL_TOKEN_ENV}" if enroll_env else str(enroll_file),
        )

    def check_admin(self, given: str) -> None:
        if not given or not secrets_match(given, self.admin):
            raise Unauthenticated("admin token missing or wrong")

    def check_enroll(self, given: str) -> None:
        if not given or not secrets_match(given, self.enroll):
            raise Unauthenticated("enrollment token missing or wrong")
