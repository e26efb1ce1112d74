"""The SSRF guard: public addresses only, checked at submission and again at run time, the
checked address pinned (Host header and TLS name kept), no redirects, no remote bodies echoed.

No test here sends traffic anywhere but 127.0.0.1: host names resolve through injected
resolvers, and the only servers are on loopback.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import serving

from appliance.audits.egress import EgressGuard, check_endpoint_url, refusal_reason
from appliance.audits.errors import EgressRefusedError, RemoteEndpointError
from appliance.audits.suspects import RemoteEndpoint
from appliance.capabilities.ownership.job import OwnershipParams, _suspect_fn
from appliance.errors import UnprocessableInput, ValidationFailed

SECRET = "internal-secret-7f3a"
X = np.zeros((3, 1, 2, 2), np.float32)

REFUSED = [
    "100.64.0.1",  # shared address space (CGNAT): a worker really connected here
    "100.127.255.254",
    "10.0.0.1", "172.16.0.1", "192.168.1.1", "127.0.0.1", "169.254.169.254", "0.0.0.0",
    "192.0.2.1", "198.18.0.1", "240.0.0.1", "255.255.255.255", "224.0.0.1", "239.1.2.3",
    "fec0::1",  # site-local
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:6440:1::1",  # 6to4 of 100.64.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::6440:1",  # NAT64 of 100.64.0.1
    "64:ff9b:1::808:808",  # local-use NAT64
    "::ffff:8.8.8.8", "::ffff:127.0.0.1",  # IPv4-mapped, even of a public address
    "::8.8.8.8",  # IPv4-compatible
    "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1", "ff0e::1", "2001:db8::1", "100::1",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001::1",
           "2002:808:808::1", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is not None
    with pytest.raises(EgressRefusedError, match="non-public"):
        EgressGuard(resolver=lambda host, port: [address]).resolve("http://suspect.test/embed")


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass_and_are_pinned(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None
    target = EgressGuard(resolver=lambda host, port: [address]).resolve("https://Suspect.test/embed")
    assert (target.scheme, target.host, target.port, target.address) == ("https", "suspect.test", 443, address)


def test_every_resolved_address_must_pass_and_private_needs_the_operator() -> None:
    mixed = EgressGuard(resolver=lambda host, port: ["8.8.8.8", "100.64.0.1"])
    with pytest.raises(EgressRefusedError, match="not globally routable"):
        mixed.resolve("http://suspect.test/")
    lab = EgressGuard(allow_private=True, resolver=lambda host, port: ["100.64.0.1"])
    assert lab.resolve("http://suspect.test/").address == "100.64.0.1"
    for never in ("224.0.0.1", "0.0.0.0", "::"):  # not even for the operator
        with pytest.raises(EgressRefusedError):
            EgressGuard(allow_private=True).resolve(f"http://[{never}]/" if ":" in never else f"http://{never}/")
    for bad in ("ftp://h.test/", "http://user:pw@h.test/", "http://h.test:99999/", "http:///x"):
        with pytest.raises(EgressRefusedError):
            EgressGuard(resolver=lambda host, port: ["8.8.8.8"]).resolve(bad)


def _fake_getaddrinfo(answers: list[str]) -> Any:
    """A ``socket.getaddrinfo`` that answers with the next address of ``answers`` per call."""
    calls = iter(answers)

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        address = next(calls)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    return getaddrinfo


@pytest.mark.parametrize("address", ["100.64.0.1", "fec0::1", "2002:a00:1::1"])
def test_submission_refuses_what_passed_before(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_ALLOW_PRIVATE_ENDPOINTS", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", _fake_getaddrinfo([address]))
    with pytest.raises(UnprocessableInput, match="non-public"):
        check_endpoint_url("http://suspect.test/embed")


@pytest.mark.parametrize("url", ["http://[::1/x", "http://h.test:99999/", "http://h.test:port/"])
def test_malformed_urls_are_refused_at_submission_not_crashed_on(url: str) -> None:
    with pytest.raises(ValidationFailed, match="malformed"):  # was a ValueError (a 500)
        check_endpoint_url(url)


def test_the_job_checks_again_when_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: public at submission, 100.64.0.1 when the job (or its re-queue) runs."""
    monkeypatch.delenv("APPLIANCE_ALLOW_PRIVATE_ENDPOINTS", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", _fake_getaddrinfo(["93.184.216.34", "100.64.0.1"]))
    url = "http://rebind.test/embed"
    check_endpoint_url(url)  # submission: passes, no traffic
    params = OwnershipParams.model_validate({
        "method": "dov4cl", "suspect_endpoint": {"url": url}, "public_dataset_id": "a",
        "private_dataset_id": "b", "shadow_model_ids": ["c"]})
    with pytest.raises(EgressRefusedError, match="non-public"):
        _suspect_fn(None, params, {}, "embed")  # type: ignore[arg-type]


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        n = len(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["inputs"])
        _Recorder.seen.append({"path": self.path, "host": self.headers["Host"],
                               "peer": self.client_address[0]})
        if self.path == "/embed":
            self._send(200, json.dumps({"outputs": [[1.0, 2.0]] * n}).encode())
        elif self.path == "/refuse":
            self._send(400, json.dumps({"error": SECRET}).encode())
        elif self.path == "/html":
            self._send(200, f"<html>{SECRET}</html>".encode(), **{"Content-Type": "text/html"})
        elif self.path == "/strings":
            self._send(200, json.dumps({"outputs": [[SECRET]] * n}).encode())
        elif self.path == "/redirect":
            self._send(302, b"{}", Location="/embed")


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)) as bound:
        yield bound


def _pinned_once(address: str = "127.0.0.1") -> EgressGuard:
    """Loopback allowed; the made-up name resolves once, and any second lookup fails the test."""
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        assert not calls, "the host was resolved a second time"
        calls.append(host)
        return [address]

    return EgressGuard(allow_private=True, resolver=resolver)


def test_requests_go_to_the_pinned_address_with_the_urls_host(port: int) -> None:
    _Recorder.seen.clear()
    url = f"http://suspect.test:{port}/embed"  # not resolvable: only the pin reaches the server
    with RemoteEndpoint(url, kind="embed", max_batch=2, guard=_pinned_once()) as endpoint:
        assert endpoint.target.address == "127.0.0.1"
        assert endpoint(X).shape == (3, 2)
    assert _Recorder.seen == [{"path": "/embed", "host": f"suspect.test:{port}", "peer": "127.0.0.1"}] * 2


def test_the_pinned_client_refuses_other_origins(port: int) -> None:
    guard = _pinned_once()
    with guard.client(f"http://suspect.test:{port}/embed", timeout_s=5) as client:
        for other in (f"http://other.test:{port}/embed", f"http://suspect.test:{port + 1}/embed",
                      f"https://suspect.test:{port}/embed", f"http://127.0.0.1:{port}/embed"):
            with pytest.raises(EgressRefusedError, match="not for the checked endpoint"):
                client.post(other, json={"inputs": []})


@pytest.mark.parametrize(("route", "expected"), [
    ("/refuse", "HTTP 400"), ("/html", "invalid JSON"), ("/strings", "not a numeric array"),
    ("/redirect", "redirect \\(HTTP 302\\)")])
def test_errors_never_echo_the_remote_body_and_redirects_are_not_followed(
    port: int, route: str, expected: str
) -> None:
    _Recorder.seen.clear()
    with RemoteEndpoint(f"http://suspect.test:{port}{route}", kind="embed", retries=0,
                        guard=_pinned_once()) as endpoint:
        with pytest.raises(RemoteEndpointError, match=expected) as info:
            endpoint(X)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value.__cause__)
    assert [seen["path"] for seen in _Recorder.seen] == [route]  # a redirect is not followed


def _self_signed(name: str, folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_keeps_the_server_name_and_the_certificate_check(tmp_path: Path) -> None:
    cert, key = _self_signed("suspect.test", tmp_path)
    server_names: list[str | None] = []
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server_tls.sni_callback = lambda sock, name, ctx: server_names.append(name)  # type: ignore[assignment]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    httpd.socket = server_tls.wrap_socket(httpd.socket, server_side=True)
    client_tls = ssl.create_default_context(cafile=str(cert))  # trusts suspect.test, not 127.0.0.1
    with serving(httpd) as port:
        _Recorder.seen.clear()
        with _pinned_once().client(f"https://suspect.test:{port}/embed", timeout_s=5,
                                   verify=client_tls) as client:
            answer = client.post(f"https://suspect.test:{port}/embed", json={"inputs": [[0.0]]})
        assert answer.status_code == 200 and answer.json() == {"outputs": [[1.0, 2.0]]}
        assert server_names == ["suspect.test"]
        assert _Recorder.seen == [{"path": "/embed", "host": f"suspect.test:{port}", "peer": "127.0.0.1"}]
        # a name the certificate does not carry fails the check, though the address is the same
        with _pinned_once().client(f"https://wrong.test:{port}/embed", timeout_s=5,
                                   verify=client_tls) as client:
            with pytest.raises(Exception, match="certificate|hostname"):
                client.post(f"https://wrong.test:{port}/embed", json={"inputs": [[0.0]]})
