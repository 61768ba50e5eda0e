"""Fetch an image by URL without letting callers reach the server's own network (SSRF guard).

Only when ``allow_url_fetch`` is on. Every address the host name resolves to must be public
(not private, loopback, link-local, site-local, multicast, reserved, unspecified or the 6to4 relay
anycast range), and so must every IPv4 address an IPv6 address embeds (IPv4-mapped and -compatible,
6to4, Teredo, NAT64, ISATAP); the connection then goes to the address that was checked (the Host
header and TLS SNI carry the name), so a DNS answer that changes between the check and the connect cannot redirect
it. Redirects are followed by hand, at most three, each one checked the same way. The body is
read in chunks and abandoned past ``max_bytes``; the whole fetch has one time budget.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Awaitable, Callable
from urllib.parse import urljoin

from workzone.errors import PayloadTooLarge, UrlFetchFailed, UrlNotAllowed

__all__ = ["fetch_image_bytes", "check_public_host", "is_public_address"]

Resolver = Callable[[str, int], Awaitable[list[str]]]

_MAX_REDIRECTS = 3


def is_public_address(addr: str) -> bool:
    """True when ``addr`` (an IP literal) is a globally routable unicast address.

    Examples:
        >>> is_public_address("127.0.0.1"), is_public_address("::ffff:10.0.0.1"), is_public_address("8.8.8.8")
        (False, False, True)
    """
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    embedded = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else []
    return all(_is_public(a) for a in [ip, *embedded])


# IPv6 prefixes that carry an IPv4 address the traffic ends up at: NAT64 (RFC 6052 well-known and
# RFC 8215 local-use) in the low 32 bits; 6to4 (2002::/16) and Teredo (2001::/32) have their own accessors.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address ``ip`` embeds: IPv4-mapped, IPv4-compatible, 6to4, Teredo (server and
    client), NAT64 and ISATAP forms.

    Examples:
        >>> [str(a) for a in _embedded_ipv4(ipaddress.IPv6Address("2002:a9fe:a9fe::"))]
        ['169.254.169.254']
    """
    out: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip in net for net in _NAT64) or (int(ip) >> 32 == 0 and int(ip) > 0xFFFF):  # NAT64, IPv4-compatible
        out.append(low32)
    elif (int(ip) >> 32) & 0xFDFFFFFF == 0x00005EFE:  # ISATAP interface id (RFC 5214): ::0:5efe:a.b.c.d, ::200:5efe:...
        out.append(low32)
    return out


# Ranges Python's ipaddress calls global that must not be fetched: the deprecated 6to4 relay anycast
# (RFC 7526; it forwards to whatever 6to4 address follows) and IPv6 site-local (RFC 3879, still
# routed inside some networks).
_NOT_PUBLIC = (ipaddress.IPv4Network("192.88.99.0/24"), ipaddress.IPv6Network("fec0::/10"))


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    bad = (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
           or ip.is_unspecified or not ip.is_global or any(ip in net for net in _NOT_PUBLIC
                                                          if net.version == ip.version))
    return not bad


async def _system_resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UrlFetchFailed(f"cannot resolve host {host!r}") from exc
    return sorted({str(info[4][0]) for info in infos})


async def check_public_host(host: str, port: int, resolver: Resolver | None = None,
                            allow: Callable[[str], bool] = is_public_address) -> str:
    """Resolve ``host`` and return one of its addresses if every address is public.

    Raises:
        UrlNotAllowed: any address is private, loopback, link-local or otherwise not public.
        UrlFetchFailed: the name does not resolve.
    """
    addrs = await (resolver or _system_resolve)(host, port)
    if not addrs:
        raise UrlFetchFailed(f"host {host!r} resolves to no address")
    refused = [a for a in addrs if not allow(a)]
    if refused:
        raise UrlNotAllowed(
            f"URL host {host!r} resolves to non-public address(es) {', '.join(refused)}; only public "
            "addresses may be fetched"
        )
    return addrs[0]


async def fetch_image_bytes(url: str, *, max_bytes: int, timeout_s: float, total_s: float | None = None,
                            resolver: Resolver | None = None,
                            allow: Callable[[str], bool] = is_public_address) -> bytes:
    """Download ``url`` (http or https) after checking where it points.

    Args:
        url: the image URL given by the client.
        max_bytes: largest body accepted.
        timeout_s: budget for each connection and read.
        total_s: budget for the whole fetch, redirects and body included (a server that trickles
            one byte a second never outlives it); ``timeout_s`` when omitted.
        resolver: name -> addresses; the system resolver by default (tests inject one).
        allow: which resolved addresses may be fetched; public ones only by default (tests of the
            budget point it at a loopback server).

    Raises:
        UrlNotAllowed: bad scheme, or a non-public address.
        UrlFetchFailed: network error, timeout, HTTP error status, too many redirects, or the whole
            fetch took longer than ``total_s``.
        PayloadTooLarge: the body is larger than ``max_bytes``.
    """
    total = timeout_s if total_s is None else total_s
    try:
        async with asyncio.timeout(total):
            return await _fetch(url, max_bytes, timeout_s, resolver, allow)
    except TimeoutError:
        raise UrlFetchFailed(f"{url}: the image did not arrive whole within {total:g} s (the fetch budget is the "
                             "smaller of the URL fetch timeout and what is left of the request's deadline)") from None


async def _fetch(url: str, max_bytes: int, timeout_s: float, resolver: Resolver | None,
                 allow: Callable[[str], bool]) -> bytes:
    import httpx

    current = url
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                parsed = httpx.URL(current)
            except httpx.InvalidURL as exc:
                raise UrlNotAllowed(f"not a valid URL: {current[:200]!r}") from exc
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise UrlNotAllowed(f"only http and https URLs with a host are accepted, got {current!r}")
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            addr = await check_public_host(parsed.host, port, resolver, allow)
            pinned = parsed.copy_with(host=addr)
            headers = {"Host": parsed.netloc.decode("ascii"), "Accept": "image/*"}
            extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
            try:
                async with client.stream("GET", pinned, headers=headers, extensions=extensions) as resp:
                    if resp.is_redirect:
                        location = resp.headers.get("location")
                        if not location:
                            raise UrlFetchFailed(f"{current}: redirect without a Location header")
                        current = urljoin(current, location)
                        continue
                    if resp.status_code >= 400:
                        raise UrlFetchFailed(f"{current}: the server answered HTTP {resp.status_code}")
                    declared = resp.headers.get("content-length")
                    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                        raise PayloadTooLarge(f"{current}: image is {declared} bytes, over the limit of {max_bytes}")
                    chunks: list[bytes] = []
                    total = 0
                    async for chunk in resp.aiter_bytes():
                        total += len(chunk)
                        if total > max_bytes:
                            raise PayloadTooLarge(f"{current}: image is over the limit of {max_bytes} bytes")
                        chunks.append(chunk)
                    return b"".join(chunks)
            except httpx.TimeoutException as exc:  # one operation (connect, a read) past timeout_s
                raise UrlFetchFailed(f"{current}: no answer within {timeout_s:g} s") from exc
            except httpx.HTTPError as exc:
                raise UrlFetchFailed(f"{current}: the connection failed ({type(exc).__name__})") from exc
    raise UrlFetchFailed(f"{url}: more than {_MAX_REDIRECTS} redirects")
