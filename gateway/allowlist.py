"""The optional allow-list of worker hosts, checked when a worker registers.

Entries are IP addresses or CIDR networks (`10.0.0.0/8`, `fd00::/8`), host names
(`models.internal`) and subdomain wildcards (`*.models.internal`). A worker passes when the host
of every URL it would be called at is a listed name or matches a wildcard, is an IP address
inside a listed network, or is a name whose every resolved address is inside a listed network.
No placeholder may decide the host, or a prompt could pick where the gateway connects. The
worker's `health_url` and `metrics_url` are checked the same way: the gateway reads them every
few seconds. (Without a `metrics_url`, load is read at the worker's own host and port.)

This is checked at registration only: a name that later resolves elsewhere is not re-checked
(list networks, not names, where that matters), and workers registered before the list was
set stay registered.
"""

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from yarl import URL

from gateway.errors import WorkerNotAllowed
from registry import WorkerSpec
from templates import MODEL_NAME

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_RESOLVE_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class AllowList:
    networks: tuple[Network, ...]
    names: frozenset[str]
    suffixes: tuple[str, ...]  # ".models.internal" for the entry "*.models.internal"

    @classmethod
    def parse(cls, entries: Iterable[str]) -> "AllowList":
        """Build the list from settings entries (already checked by Settings)."""
        networks: list[Network] = []
        names: set[str] = set()
        suffixes: list[str] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = _normal(entry)
            if name.startswith("*."):
                suffixes.append(name[1:])
            else:
                names.add(name)
        return cls(tuple(networks), frozenset(names), tuple(suffixes))

    @property
    def enabled(self) -> bool:
        return bool(self.networks or self.names or self.suffixes)

    async def check(self, spec: WorkerSpec) -> None:
        """Raise WorkerNotAllowed unless every URL of the worker is inside the list."""
        if not self.enabled:
            return
        for host, port in _hosts(spec):
            await self._check_host(host, port, "worker host")
        for name, url in (("health_url", spec.health_url), ("metrics_url", spec.metrics_url)):
            if url is not None:
                host, port = _url_host(url, name)
                await self._check_host(host, port, f"{name} host")

    async def _check_host(self, host: str, port: int, what: str) -> None:
        name = _normal(host)
        if name in self.names or name.endswith(self.suffixes):
            return
        literal = _address(name)
        addresses = [literal] if literal is not None else await _resolve(name, port, what)
        outside = [str(a) for a in addresses if not self._inside(a)]
        if outside:
            where = "" if literal is not None else f" (it resolves to {', '.join(outside)})"
            raise WorkerNotAllowed(
                f"{what} {host!r}{where} is outside the gateway's worker_allowlist; "
                "use a host inside the list, or ask the operator to extend it"
            )

    def _inside(self, address: Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def _hosts(spec: WorkerSpec) -> set[tuple[str, int]]:
    """Return the (host, port) of every URL the worker may be called at."""
    found: set[tuple[str, int]] = set()
    for op in spec.compile().operations.values():
        template = op.plan.url
        # Rendered twice with different request values: a host that changes would be chosen by
        # the client. {MODEL_NAME} is the worker's own, fixed at registration.
        urls = []
        for sample in ("a", "b"):
            values = {name: sample for name in template.names}
            values[MODEL_NAME] = spec.served_model
            try:
                urls.append(URL(template.render(values, url_encode=True)))
            except ValueError:
                urls.append(URL())
        first, second = urls
        if (first.host, first.port) != (second.host, second.port) or not first.host:
            raise WorkerNotAllowed(
                "with worker_allowlist set, the host and port of req_url_template must be "
                "written out (or come from {MODEL_NAME}), not filled in from the request"
            )
        found.add((first.host, first.port or 80))
    return found


def _url_host(raw: str, name: str) -> tuple[str, int]:
    try:
        url = URL(raw)
    except ValueError as exc:
        raise WorkerNotAllowed(f"{name} is not a valid URL ({exc}); fix it") from None
    if not url.host:
        raise WorkerNotAllowed(f"{name} has no host; write it as http://host:port/path")
    return url.host, url.port or 80


def _normal(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def _resolve(host: str, port: int, what: str) -> list[Address]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(_RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise WorkerNotAllowed(
            f"{what} {host!r} could not be resolved to check it against the gateway's "
            f"worker_allowlist ({exc or 'timed out'}); use a host that resolves, or an IP address"
        ) from None
    addresses: list[Address] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = _address(str(sockaddr[0]).partition("%")[0])
        if address is not None:
            addresses.append(address)
    if not addresses:
        raise WorkerNotAllowed(f"{what} {host!r} resolves to no IP address")
    return addresses
