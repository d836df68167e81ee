"""Where an image or video part's bytes come from: a data URL, one of the user's files, or an allowed URL.

SSRF: neither the web nor the workers fetch arbitrary URLs. A remote http(s) URL is refused unless its
host (or host:port) is in AIHUB_VISION_URL_HOSTS. Even then, the host name is resolved once, every address
must be public (no loopback, private, link-local or reserved range: a listed name whose DNS answer points
inside the network is refused), and the connection goes to that checked address, so a second DNS answer
cannot redirect it. An IP literal the operator lists is their explicit choice and may be private.
Redirects are followed only to the same host and port (at most three), the body is read up to the byte
limit and no further, and the whole fetch has one timeout.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import time
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from .images import InvalidMedia

MAX_REDIRECTS = 3


def data_url_bytes(url: str, *, kind: str) -> bytes:
    """The bytes of a `data:<mime>;base64,<data>` URL; `kind` (image, video) is the MIME type's family."""
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:") or not header.endswith(";base64"):
        raise InvalidMedia(f"A data URL must look like data:{kind}/<type>;base64,<data>.", "invalid_data_url")
    mime = header[len("data:"):-len(";base64")]
    if not mime.startswith(f"{kind}/"):
        raise InvalidMedia(f"The data URL holds '{mime or 'no type'}', not an {kind}.", "invalid_data_url")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidMedia("The data URL's payload is not valid base64.", "invalid_data_url")


def url_allowed(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL whose host the operator lists; None if it is not listed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    listed = {entry.lower() for entry in settings.AIHUB_VISION_URL_HOSTS}
    host = parts.hostname.lower()
    return (parts.scheme, host, port) if host in listed or f"{host}:{port}" in listed else None


def remote_bytes(url: str, *, limit: int) -> bytes:
    """Fetch an allowed URL's body (at most `limit` bytes); InvalidMedia for anything refused or failed."""
    allowed = url_allowed(url)
    if allowed is None:
        raise InvalidMedia("Remote image URLs are not fetched unless the operator allows their host "
                           "(AIHUB_VISION_URL_HOSTS); send the image as a data URL or a file id instead.",
                           "remote_url_not_allowed")
    deadline = time.monotonic() + settings.AIHUB_VISION_URL_TIMEOUT_SECONDS
    for _ in range(MAX_REDIRECTS + 1):
        scheme, host, port = allowed
        address = _checked_address(host, port)
        with httpx.Client(timeout=max(0.1, deadline - time.monotonic()), follow_redirects=False,
                          trust_env=False) as client:
            target = urlsplit(url)._replace(netloc=f"{_netloc(address)}:{port}").geturl()
            try:
                with client.stream("GET", target, headers={"Host": host if port in (80, 443) else f"{host}:{port}"},
                                   extensions={"sni_hostname": host}) as response:
                    if response.is_redirect:
                        url = str(httpx.URL(url).join(response.headers.get("location", "")))
                        follow = url_allowed(url)
                        if follow is None or follow[1:] != allowed[1:]:
                            raise InvalidMedia("The image URL redirects to another host; redirects are followed "
                                               "only within the same host.", "remote_url_not_allowed")
                        allowed = follow
                        continue
                    if response.status_code != 200:
                        raise InvalidMedia(f"Fetching the image URL answered HTTP {response.status_code}.",
                                           "remote_url_failed")
                    return _read_limited(response, limit, deadline)
            except httpx.HTTPError as exc:
                raise InvalidMedia(f"The image URL could not be fetched ({type(exc).__name__}).", "remote_url_failed")
    raise InvalidMedia(f"The image URL redirects more than {MAX_REDIRECTS} times.", "remote_url_failed")


def _read_limited(response: httpx.Response, limit: int, deadline: float) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise InvalidMedia(f"The URL's body is {declared} bytes; at most {limit} are accepted.", "image_too_large")
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > limit:
            raise InvalidMedia(f"The URL's body is over {limit} bytes.", "image_too_large")
        if time.monotonic() > deadline:
            raise InvalidMedia("Fetching the image URL took too long.", "remote_url_failed")
    return bytes(body)


def _checked_address(host: str, port: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host.strip("[]"))  # a listed IP literal: the operator's explicit choice
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidMedia(f"The image URL's host '{host}' does not resolve.", "remote_url_failed")
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses or any(not address.is_global for address in addresses):
        raise InvalidMedia(f"The image URL's host '{host}' resolves to a private or reserved address; "
                           "it is not fetched.", "remote_url_not_allowed")
    return addresses[0]


def _netloc(address) -> str:
    return f"[{address}]" if address.version == 6 else str(address)
