"""Web origins in one normal form, shared by the SDK and the engine.

The SDK writes a page's origin into the session token it mints; the engine compares that
claim (and the popup's `origin` parameter) with the origins an app allows. Both sides
must agree on what "the same origin" means, or an allowed origin written another way
(`https://App.example.com`, `https://app.example.com:443`) is refused. So both import
this one function. It is pure (the standard library only) so that the SDK, which imports
nothing of the engine or Flask, may use it.

The normal form is what a browser puts in an `Origin` header: `scheme://host[:port]`,
scheme and host lower-cased, the default port (80 for http, 443 for https) left out,
IPv6 hosts in brackets, no path, query, fragment or user info.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

__all__ = ["normalise_origin"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Host names as browsers send them in an Origin header (IDNs in their xn-- form).
_HOST = re.compile(r"[a-z0-9_.-]+")
# Long enough for any real host name (253 characters) with a scheme and a port.
_MAX_LENGTH = 300


def normalise_origin(value: object) -> str | None:
    """`value` as `scheme://host[:port]`, or None if it is not an http(s) origin.

    A trailing "/" is accepted (`https://app.example.com/`), a path is not: an origin
    names a site, not a page.
    """
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_LENGTH:
        return None
    try:
        parts = urlsplit(value.strip())
        port = parts.port  # ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username is not None or "@" in parts.netloc:
        return None
    host = parts.hostname.lower()  # urlsplit lower-cases it already; said for the reader
    if ":" in host:
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            return None
    else:
        if not host.isascii():
            try:  # what a browser sends for an internationalised name: its xn-- form
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                return None
        if not _HOST.fullmatch(host):
            return None
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"
