"""Where the CLI finds its coordinator: flag > environment > context > default.

Named contexts (like kubeconfig's, or ``flwr config``) live in one TOML file,
``$EDGEFLEET_CONFIG`` or ``~/.config/edgefleet/config.toml``::

    current-context = "lab"

    [contexts.lab]
    coordinator = "10.0.0.5:50051"
    ca-cert = "/home/me/lab-ca.pem"
    admin-token-file = "/home/me/lab-admin.token"
    insecure = false

A context stores the *path* of the admin token, never the token, so the file can be shared
and backed up. Nothing here imports gRPC: ``edgefleet config ...`` stays fast.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.fsutil import atomic_write

__all__ = [
    "CONFIG_ENV",
    "ConfigError",
    "Context",
    "EdgefleetConfig",
    "Resolved",
    "config_path",
    "resolve",
]

CONFIG_ENV = "EDGEFLEET_CONFIG"
CONTEXT_ENV = "EDGEFLEET_CONTEXT"
DEFAULT_COORDINATOR = "127.0.0.1:50051"
#: the keys a context may hold, in the order they are written
CONTEXT_KEYS = ("coordinator", "ca-cert", "admin-token-file", "insecure")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ConfigError(ValueError):
    """The config file or a context in it cannot be used (message is one line)."""


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$EDGEFLEET_CONFIG``, else ``$XDG_CONFIG_HOME/edgefleet/config.toml``, else under ~."""
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser().absolute()
    base = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return (base / "edgefleet" / "config.toml").absolute()


@dataclass(frozen=True)
class Context:
    """One named coordinator: where it is, which CA to trust, where its admin token is."""

    name: str
    coordinator: str | None = None
    ca_cert: str | None = None
    admin_token_file: str | None = None
    insecure: bool | None = None

    def to_toml_fields(self) -> dict[str, str | bool]:
        values = {
            "coordinator": self.coordinator,
            "ca-cert": self.ca_cert,
            "admin-token-file": self.admin_token_file,
            "insecure": self.insecure,
        }
        return {k: v for k, v in values.items() if v is not None}

    def admin_token(self) -> str:
        """The token in ``admin-token-file`` ("" when the context names none)."""
        if not self.admin_token_file:
            return ""
        path = Path(self.admin_token_file).expanduser()
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"context {self.name!r}: cannot read admin-token-file {path}: {exc.strerror}"
            ) from None


def _context_from_toml(name: str, raw: Any, path: Path) -> Context:
    """Validate one ``[contexts.NAME]`` table (unknown keys and wrong types are refused)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: contexts.{name} must be a table")
    unknown = sorted(set(raw) - set(CONTEXT_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: contexts.{name} has unknown key(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(CONTEXT_KEYS)})"
        )
    for key in ("coordinator", "ca-cert", "admin-token-file"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{path}: contexts.{name}.{key} must be a string")
    if "insecure" in raw and not isinstance(raw["insecure"], bool):
        raise ConfigError(f"{path}: contexts.{name}.insecure must be true or false")
    return Context(
        name=name,
        coordinator=raw.get("coordinator"),
        ca_cert=raw.get("ca-cert"),
        admin_token_file=raw.get("admin-token-file"),
        insecure=raw.get("insecure"),
    )


def _quote(value: str) -> str:
    """A TOML basic string (we write only strings and booleans, so no TOML writer needed)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped)
    return f'"{escaped}"'


def _toml_value(value: str | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else _quote(value)


@dataclass
class EdgefleetConfig:
    """The config file's contents: the current context's name and every context."""

    path: Path
    current_context: str | None = None
    contexts: dict[str, Context] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> EdgefleetConfig:
        """Read ``path`` (default :func:`config_path`); a missing file is an empty config."""
        path = path or config_path()
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        current = doc.get("current-context")
        if current is not None and not isinstance(current, str):
            raise ConfigError(f"{path}: current-context must be a string")
        tables = doc.get("contexts", {})
        if not isinstance(tables, dict):
            raise ConfigError(f"{path}: contexts must be a table of [contexts.NAME]")
        contexts = {n: _context_from_toml(n, raw, path) for n, raw in tables.items()}
        return cls(path, current, contexts)

    def get(self, name: str) -> Context:
        """The context called ``name``, or a one-line error listing the ones there are."""
        try:
            return self.contexts[name]
        except KeyError:
            known = ", ".join(sorted(self.contexts)) or "none yet"
            raise ConfigError(
                f"no context {name!r} in {self.path} (known: {known}; "
                "add one with `edgefleet config set-context NAME --coordinator HOST:PORT`)"
            ) from None

    def to_toml(self) -> str:
        lines = []
        if self.current_context is not None:
            lines += [f"current-context = {_quote(self.current_context)}", ""]
        for name in sorted(self.contexts):
            lines.append(f"[contexts.{_quote(name)}]")
            for key, value in self.contexts[name].to_toml_fields().items():
                lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        return "\n".join(lines)

    def save(self) -> None:
        """Write atomically (a crash leaves the old file), readable by the owner only."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, self.to_toml(), mode=0o600)


@dataclass(frozen=True)
class Resolved:
    """What one command uses to reach the coordinator, after precedence."""

    coordinator: str
    admin_token: str
    ca_cert: Path | None
    insecure: bool
    context: str | None


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name)
    if raw is None or not raw.strip():  # unset and empty alike
        return None
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise ConfigError(f"{name} must be 1/true/yes or 0/false/no, got {raw!r}")


def _insecure(flags: Mapping[str, Any], env: Mapping[str, str], ctx: Context | None) -> bool:
    """Plaintext or TLS, level by level; at each level a CA given explicitly means TLS."""
    if flags.get("insecure"):
        return True
    if flags.get("ca_cert"):
        return False
    from_env = _env_bool(env, "EDGEFLEET_INSECURE")
    if from_env is not None:
        return from_env
    if env.get("EDGEFLEET_CA_CERT"):
        return False
    return bool(ctx is not None and ctx.insecure)


def _active_context(flags: Mapping[str, Any], env: Mapping[str, str], load: Any) -> Context | None:
    """``--context`` > ``$EDGEFLEET_CONTEXT`` > the file's current-context > none."""
    explicit = flags.get("context") or env.get(CONTEXT_ENV)
    if not explicit and not Path(config_path(env)).exists():
        return None
    config: EdgefleetConfig = load()
    name = explicit or config.current_context
    return config.get(name) if name else None


def resolve(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    default_ca: Path | None = None,
) -> Resolved:
    """Apply flag > environment > context > default to each setting on its own.

    ``flags`` holds only options given on the command line (either side of the
    subcommand). An explicit ``--ca-cert`` (flag or env) beats an ``insecure = true``
    inherited from a context: asking for a CA means asking for TLS.
    """
    env = os.environ if env is None else env
    ctx = _active_context(flags, env, lambda: EdgefleetConfig.load(config_path(env)))
    coordinator = (
        flags.get("coordinator")
        or env.get("EDGEFLEET_COORDINATOR")
        or (ctx.coordinator if ctx else None)
        or DEFAULT_COORDINATOR
    )
    admin_token = (
        flags.get("admin_token")
        or env.get("EDGEFLEET_ADMIN_TOKEN")
        or (ctx.admin_token() if ctx else "")
    )
    explicit_ca = flags.get("ca_cert") or env.get("EDGEFLEET_CA_CERT")
    context_ca = ctx.ca_cert if ctx and ctx.ca_cert else None
    ca = explicit_ca or context_ca
    ca_path = Path(ca).expanduser() if ca else default_ca
    return Resolved(
        coordinator=str(coordinator),
        admin_token=str(admin_token),
        ca_cert=ca_path,
        insecure=_insecure(flags, env, ctx),
        context=ctx.name if ctx else None,
    )
