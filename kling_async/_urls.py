"""The checks every URL the SDK is given or follows must pass, in one place.

Pure functions (values in, values out): the session's base URL, a callback receiver's public
URL, a media URL and each redirect of it are parsed by `http_url`, which refuses anything
that is not plain http(s), is malformed, or carries a user name or password (the one
credential-leak guard: aiohttp would send user info as Basic auth, to whatever host the URL
names). `insecure` says when plain http would expose a credential, and `refused_address`
says which IP addresses a download must not reach.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse

from .errors import InvalidArgumentError
from .models import check_text

__all__ = [
    "IPAddress",
    "http_url",
    "insecure",
    "is_loopback",
    "literal_address",
    "redact",
    "refused_address",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# What inet_aton (and so getaddrinfo) reads as an IPv4 address: 1 to 4 parts, each decimal,
# octal (leading 0) or hex (0x): "2130706433", "0x7f.1", "0177.0.0.1" all mean 127.0.0.1.
_LEGACY_IPV4 = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.I)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known prefix: the last 32 bits are IPv4


def redact(url: str) -> str:
    """``url`` without user info, query string or fragment: signed URLs keep secrets there."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<an invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def http_url(url: object, field: str) -> urllib.parse.SplitResult:
    """Parse an http(s) URL, or raise `InvalidArgumentError` naming ``field`` (TypeError for a
    non-str): valid Unicode, no spaces or control characters, a valid port, a host, and no
    user name or password. Messages show the URL without user info or query string."""
    if not isinstance(url, str):
        raise TypeError(f"{field} must be a str, not {type(url).__name__}")
    check_text(field, url)
    if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        raise InvalidArgumentError(field, "must not contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  # raises for ":abc" and ports past 65535
    except ValueError as exc:
        raise InvalidArgumentError(field, f"is not a valid URL ({exc})") from None
    if "@" in parts.netloc:
        # The credential would go to the host (aiohttp sends user info as Basic auth) and
        # into every repr and log line that shows the URL.
        raise InvalidArgumentError(field, "must not carry a user name or password")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError(field, f"must be an http(s) URL, got {redact(url)!r}")
    return parts


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost``, ``*.localhost`` or a loopback IP."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address = literal_address(host)
    return address is not None and _unwrapped(address).is_loopback


def insecure(parts: urllib.parse.SplitResult) -> bool:
    """Plain http to a host other than this machine: whatever it carries can be read."""
    return parts.scheme.lower() == "http" and not is_loopback(parts.hostname or "")


def literal_address(host: str) -> IPAddress | None:
    """The IP address ``host`` spells, in any form a resolver reads without asking DNS
    (``::ffff:127.0.0.1``, ``2130706433``, ``0x7f.1``), or None for a name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 zone is not the address
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            return None
    return None


def refused_address(address: IPAddress, *, allow_loopback: bool) -> str | None:
    """Why a download must not connect to ``address`` (None when it may): anything but a
    public unicast address, except loopback when ``allow_loopback``."""
    address = _unwrapped(address)
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


def _unwrapped(address: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped or NAT64 IPv6 address, else ``address``."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address
