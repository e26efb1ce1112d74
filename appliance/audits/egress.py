"""Outbound HTTP to tenant-supplied URLs: public addresses only, resolved once and pinned.

    guard = EgressGuard.from_environment()        # strict unless the operator allows private
    target = guard.resolve("https://suspect.example/embed")   # refuses a non-public address
    with guard.client(target, timeout_s=10) as client:       # connects to target.address only
        client.post(target.url, json={"inputs": [...]})

An address passes when it is globally routable (:func:`refusal_reason`): IPv4 ``is_global``
and not multicast; IPv6 in global unicast ``2000::/3`` and ``is_global``, with the IPv6 forms
that carry an IPv4 address checked on that address (6to4, NAT64) or refused (IPv4-mapped,
IPv4-compatible, Teredo, local-use NAT64). Every address a name resolves to must pass, then
the client connects to the first one for the client's whole life, whatever the name resolves
to later (DNS rebinding); the ``Host`` header and the TLS server name stay the URL's host.
The client never follows redirects and refuses any request for another origin. Call
:meth:`EgressGuard.resolve` again for every new attempt at a job (a re-queue or a retry
resolves and checks afresh).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from appliance.audits.errors import EgressRefusedError
from appliance.errors import UnprocessableInput, ValidationFailed

__all__ = [
    "PRIVATE_ENDPOINTS_ENV",
    "EgressGuard",
    "PinnedTarget",
    "PinnedTransport",
    "Resolver",
    "refusal_reason",
    "system_resolver",
]

#: Set to ``1`` by the operator (tests on loopback, a lab network) to allow non-public addresses.
PRIVATE_ENDPOINTS_ENV = "APPLIANCE_ALLOW_PRIVATE_ENDPOINTS"

#: ``(host, port) -> addresses``: how a host name becomes IP address strings.
Resolver = Callable[[str, int], Sequence[str]]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's addresses for ``host`` (``getaddrinfo``, TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def _ipv4_reason(address: ipaddress.IPv4Address) -> str | None:
    if address.is_multicast:
        return "multicast"
    if not address.is_global:  # private, loopback, link-local, shared 100.64/10, reserved, ...
        return "not globally routable"
    return None


def refusal_reason(address: Address) -> str | None:
    """Why ``address`` is no public unicast destination, or ``None`` when it is one."""
    if isinstance(address, ipaddress.IPv4Address):
        return _ipv4_reason(address)
    if address.ipv4_mapped is not None:
        return "an IPv4-mapped IPv6 address"
    if address in _NAT64_WELL_KNOWN:  # the NAT64 gateway connects to the embedded IPv4
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        inner = _ipv4_reason(embedded)
        return f"a NAT64 address of an IPv4 address that is {inner}" if inner else None
    if address in _NAT64_LOCAL_USE:
        return "a local-use NAT64 address"
    if address in _IPV4_COMPATIBLE:
        return "an IPv4-compatible or unspecified IPv6 address"
    if address in _TEREDO:
        return "a Teredo address"
    if address in _SIX_TO_FOUR:
        assert address.sixtofour is not None
        inner = _ipv4_reason(address.sixtofour)
        return f"a 6to4 address of an IPv4 address that is {inner}" if inner else None
    if address.is_multicast:
        return "multicast"
    if address not in _GLOBAL_UNICAST_V6 or address.is_site_local or not address.is_global:
        return "not globally routable"
    return None


@dataclass(frozen=True, kw_only=True)
class PinnedTarget:
    """A checked URL and the one address a client may connect to for it."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


class PinnedTransport(httpx.BaseTransport):
    """An httpx transport that sends every request to ``target.address``.

    The request keeps its URL's ``Host`` header, and for https its TLS server name and
    certificate check, while the TCP connection goes to the pinned address. A request for
    another scheme, host or port raises :class:`EgressRefusedError`.
    """

    def __init__(self, target: PinnedTarget, *, verify: Any = True) -> None:
        self.target = target
        self._inner = httpx.HTTPTransport(verify=verify, trust_env=False)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to the pinned address, or refuse it for another origin."""
        url = request.url
        origin = (url.scheme, url.host, url.port or _default_port(url.scheme))
        target = self.target
        if origin != (target.scheme, target.host, target.port):
            raise EgressRefusedError(f"request for {url.scheme}://{url.host} is not for the checked endpoint")
        extensions = dict(request.extensions)
        if target.scheme == "https":
            extensions["sni_hostname"] = target.host
        pinned = httpx.Request(
            request.method,
            url.copy_with(host=target.address),
            headers=request.headers,  # carries Host: <the URL's host>
            stream=request.stream,
            extensions=extensions,
        )
        return self._inner.handle_request(pinned)

    def close(self) -> None:
        """Close the pooled connections."""
        self._inner.close()


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


@dataclass(frozen=True, kw_only=True)
class EgressGuard:
    """Decides which URLs the appliance may send requests to, and pins what it checked.

    ``allow_private`` admits non-public unicast addresses (loopback, private, link-local,
    shared); multicast and unspecified addresses are refused always. ``resolver`` turns a
    host name into addresses (tests inject one; the default asks the operating system).
    """

    allow_private: bool = False
    resolver: Resolver = field(default=system_resolver)

    @classmethod
    def from_environment(cls, *, resolver: Resolver | None = None) -> EgressGuard:
        """The operator's guard: private addresses only with ``APPLIANCE_ALLOW_PRIVATE_ENDPOINTS=1``."""
        allow = os.environ.get(PRIVATE_ENDPOINTS_ENV) == "1"
        return cls(allow_private=allow, resolver=resolver or system_resolver)

    def check_address(self, address: Address, *, host: str) -> None:
        """Raise :class:`EgressRefusedError` unless the guard admits ``address`` for ``host``."""
        reason = refusal_reason(address)
        if reason is None:
            return
        if self.allow_private and not (address.is_multicast or address.is_unspecified):
            return
        raise EgressRefusedError(f"{host} resolves to a non-public address ({reason})")

    def resolve(self, url: str) -> PinnedTarget:
        """Check ``url`` and every address its host resolves to; pin the first address."""
        if not isinstance(url, str):
            raise EgressRefusedError("the endpoint URL must be a string")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise EgressRefusedError("the endpoint URL is malformed") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise EgressRefusedError("the endpoint URL must be an http(s) URL with a host")
        if parts.username is not None or parts.password is not None:
            raise EgressRefusedError("the endpoint URL must not carry credentials")
        host = parts.hostname.lower()
        port = port or _default_port(scheme)
        try:
            literal: Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            found = [literal]
        else:
            try:
                found = [ipaddress.ip_address(raw.split("%", 1)[0]) for raw in self.resolver(host, port)]
            except (OSError, UnicodeError, ValueError):
                raise EgressRefusedError(f"cannot resolve {host!r}") from None
            if not found:
                raise EgressRefusedError(f"cannot resolve {host!r}")
        for address in found:
            self.check_address(address, host=host)
        return PinnedTarget(url=url, scheme=scheme, host=host, port=port, address=str(found[0]))

    def client(
        self,
        target: PinnedTarget | str,
        *,
        timeout_s: float,
        headers: dict[str, str] | None = None,
        verify: Any = True,
    ) -> httpx.Client:
        """An httpx client bound to one checked endpoint (resolved here if given as a URL):
        pinned address, no redirects, no proxies from the environment."""
        pinned = self.resolve(target) if isinstance(target, str) else target
        return httpx.Client(
            transport=PinnedTransport(pinned, verify=verify),
            timeout=timeout_s,
            headers=headers or {},
            follow_redirects=False,
            trust_env=False,
        )


def check_endpoint_url(url: str) -> None:
    """Refuse URLs that would let a tenant reach the appliance's own network (SSRF): the host
    must resolve to public addresses only, unless the operator allows private addresses
    (``APPLIANCE_ALLOW_PRIVATE_ENDPOINTS=1``). The job checks again when it runs."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parses the port: a malformed one raises here, not in the job
    except ValueError:
        raise ValidationFailed("suspect_endpoint.url is malformed") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed("suspect_endpoint.url must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise ValidationFailed("suspect_endpoint.url must not carry credentials")
    try:
        EgressGuard.from_environment().resolve(url)
    except EgressRefusedError as exc:
        raise UnprocessableInput(
            str(exc), hint=f"the operator can allow private endpoints with {PRIVATE_ENDPOINTS_ENV}=1"
        ) from None
