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

from edgefleet.coordinator.errors import PermissionDenied, Unauthenticated

ADMIN_TOKEN_ENV = "EDGEFLEET_ADMIN_TOKEN"
READONLY_TOKEN_ENV = "EDGEFLEET_READONLY_TOKEN"
ENROLL_TOKEN_ENV = "EDGEFLEET_ENROLL_TOKEN"
ADMIN_TOKEN_FILE = "admin.token"
READONLY_TOKEN_FILE = "readonly.token"
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
    """The coordinator's static secrets. Admin calls take the admin token (read-write) or
    the read-only token (queries only); enrollment takes the enrollment token or a
    limited-use token minted with ``edgefleet certs issue`` (checked in the store)."""

    admin: str
    enroll: str
    admin_source: str  # where the operator finds it: env var name or file path
    enroll_source: str
    readonly: str = ""
    readonly_source: str = ""

    @classmethod
    def load(cls, data_dir: Path) -> Tokens:
        def pick(env: str, file: str) -> tuple[str, str]:
            value = os.environ.get(env, "").strip()
            if value:
                return value, f"${env}"
            return _load_or_create(data_dir / file), str(data_dir / file)

        admin, admin_source = pick(ADMIN_TOKEN_ENV, ADMIN_TOKEN_FILE)
        enroll, enroll_source = pick(ENROLL_TOKEN_ENV, ENROLL_TOKEN_FILE)
        readonly, readonly_source = pick(READONLY_TOKEN_ENV, READONLY_TOKEN_FILE)
        return cls(admin, enroll, admin_source, enroll_source, readonly, readonly_source)

    def check_admin(self, given: str, *, write: bool = True) -> None:
        """Raise unless ``given`` may make this call (``write``: it changes something)."""
        if given and secrets_match(given, self.admin):
            return
        if given and self.readonly and secrets_match(given, self.readonly):
            if not write:
                return
            raise PermissionDenied(
                "the read-only token cannot change anything; use the admin token"
            )
        raise Unauthenticated("admin token missing or wrong", reason="admin_token")

    def is_static_enroll(self, given: str) -> bool:
        return bool(given) and secrets_match(given, self.enroll)
