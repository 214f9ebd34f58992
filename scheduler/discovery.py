"""Backends from DNS: one Triton endpoint name that resolves to many addresses
(a Kubernetes headless Service) becomes one backend per address, re-resolved
periodically so pods that come and go are added and removed at run time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: host, port -> the addresses the name has now (empty if it does not resolve).
Resolver = Callable[[str, int], Awaitable[list[str]]]

DNS_SCHEME = "dns:///"


async def system_resolver(host: str, port: int) -> list[str]:
    """The OS resolver (getaddrinfo, off the event loop), addresses deduplicated."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        log.warning("DNS: %s does not resolve: %s", host, exc)
        return []
    seen: dict[str, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        seen[str(sockaddr[0])] = None
    return list(seen)


def parse_dns_endpoint(endpoint: str) -> tuple[str, int] | None:
    """``dns:///name:port`` -> (name, port); None for a plain ``host:port``."""
    if not endpoint.startswith(DNS_SCHEME):
        return None
    host, sep, port = endpoint[len(DNS_SCHEME) :].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"DNS endpoint {endpoint!r} must look like dns:///name:port")
    return host, int(port)


def address_url(address: str, port: int) -> str:
    """An address as a gRPC target (IPv6 in brackets)."""
    try:
        is_v6 = ipaddress.ip_address(address).version == 6
    except ValueError:
        is_v6 = False
    return f"[{address}]:{port}" if is_v6 else f"{address}:{port}"


@dataclass(frozen=True, slots=True)
class Change:
    added: tuple[str, ...]
    removed: tuple[str, ...]


class DnsEndpointGroup:
    """The current members (``address:port`` targets) of one DNS name.

    ``refresh`` resolves again and returns what changed. A lookup that finds
    nothing keeps the old members: a DNS hiccup must not empty the fleet; a
    pod that is really gone is caught by health checks meanwhile.
    """

    def __init__(self, host: str, port: int, resolver: Resolver = system_resolver) -> None:
        self.host = host
        self.port = port
        self._resolver = resolver
        self.members: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{DNS_SCHEME}{self.host}:{self.port}"

    async def refresh(self) -> Change:
        addresses = await self._resolver(self.host, self.port)
        if not addresses:
            return Change((), ())
        targets = tuple(sorted(address_url(a, self.port) for a in addresses))
        added = tuple(t for t in targets if t not in self.members)
        removed = tuple(t for t in self.members if t not in targets)
        self.members = targets
        if added or removed:
            log.info("DNS %s: added %s, removed %s", self.name, added or "-", removed or "-")
        return Change(added, removed)
