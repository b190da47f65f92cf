"""Keep the fleet Redis's credentials out of Flower's run config (issue 18).

Why: a federated run's config (``flwr run --run-config`` / the app's ``[tool.flwr.app.config]``)
is stored by the SuperLink in its database, shown by ``flwr ls`` and kept after the run. A
``redis://user:password@host`` URL there leaks the fleet state's password to anyone who can read
the SuperLink's disk or list its runs. So the coordinator puts a credential-free URL in the run
config (:func:`strip_credentials`) and hands the credentials to the SuperLink it supervises in its
environment (:func:`credentials_env`), which Flower's ``flwr-serverapp`` processes inherit; the
ServerApp puts them back (:func:`with_credentials`). An external SuperLink's operator sets the same
two variables on its host.

Standard library only: the coordinator (which runs no Flower code) and the ServerApp (which runs
no coordinator code) both import this.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, unquote, urlencode

__all__ = [
    "PASSWORD_ENV",
    "USERNAME_ENV",
    "credentials_env",
    "split_credentials",
    "strip_credentials",
    "with_credentials",
]

USERNAME_ENV = "EDGEFLEET_REDIS_USERNAME"
PASSWORD_ENV = "EDGEFLEET_REDIS_PASSWORD"
#: query parameters redis-py reads as credentials (``unix://...?password=``)
_SECRET_QUERY = ("username", "password")


def _parts(url: str) -> tuple[str, str, str, str]:
    """(scheme, userinfo, rest of the authority and path, query) of a Redis URL.

    Works for multi-host URLs (``redis+sentinel://u:p@h1,h2/master``) where urllib would
    reject the port list: only the text before the authority's last ``@`` is userinfo.
    """
    scheme, sep, tail = url.partition("://")
    if not sep:
        return "", "", url, ""
    tail, _, query = tail.partition("?")
    authority, slash, path = tail.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at:
        return scheme, "", tail, query
    return scheme, userinfo, hosts + slash + path, query


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(the URL without credentials, username or None, password or None)."""
    scheme, userinfo, rest, query = _parts(url)
    user: str | None = None
    password: str | None = None
    if userinfo:
        name, colon, secret = userinfo.partition(":")
        user = unquote(name) or None
        password = unquote(secret) if colon else None
    kept = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "password":
            password = value
        elif key == "username":
            user = value
        else:
            kept.append((key, value))
    if not scheme:
        return url, None, None
    clean = f"{scheme}://{rest}" + (f"?{urlencode(kept)}" if kept else "")
    return clean, user, password


def strip_credentials(url: str) -> str:
    """``url`` with no username or password anywhere in it (safe for a run config)."""
    return split_credentials(url)[0]


def credentials_env(url: str) -> dict[str, str]:
    """The environment that carries ``url``'s credentials to a SuperLink's ServerApps."""
    _, user, password = split_credentials(url)
    env = {}
    if user:
        env[USERNAME_ENV] = user
    if password is not None:
        env[PASSWORD_ENV] = password
    return env


def with_credentials(url: str, env: Mapping[str, str]) -> str:
    """``url`` with the credentials from ``env`` put back, unless it carries its own (or ``env``
    has none): what the ServerApp connects with."""
    user = env.get(USERNAME_ENV)
    password = env.get(PASSWORD_ENV)
    if not url or (user is None and password is None):
        return url
    scheme, userinfo, rest, query = _parts(url)
    if not scheme or userinfo or "password=" in query or "username=" in query:
        return url
    info = quote(user or "", safe="") + ("" if password is None else f":{quote(password, safe='')}")
    return f"{scheme}://{info}@{rest}" + (f"?{query}" if query else "")
