"""The certificate machine's two helpers: `AcmeClient`, a client of an ACME-style CA (RFC 8555's
resources: directory, newOrder, authorization, challenge, finalize, certificate), and
`CertificateFiles`, where keys and certificates live (files, never the workflow's data: a
private key does not belong in a database row an operator reads).

`AcmeClient` speaks the unsigned JSON dialect of `machines.fakes.acme` (see there for how it
differs from a real CA: a real one wants JWS-signed requests, which a library such as ``acme``
does; swap this class for one built on it, keeping its methods). Answers: 2xx is the result;
429 is `RetryAfter`; 5xx, 408 and network errors are `AcmeUnavailable` (retried); any other 4xx
is `AcmeRejected`, a `PermanentError` with the problem document's ``type``.
"""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from statemachine import PermanentError, RetryAfter

__all__ = ["AcmeClient", "AcmeRejected", "AcmeUnavailable", "CertificateFiles", "Stored",
           "txt_value"]

TIMEOUT = httpx.Timeout(10.0, connect=3.0)
# The account key's JWK thumbprint (RFC 7638); the fake CA has no accounts and takes this one.
ACCOUNT_THUMBPRINT = "fake-account-thumbprint"


def txt_value(token: str, thumbprint: str = ACCOUNT_THUMBPRINT) -> str:
    """The TXT value that answers a dns-01 challenge: base64url(SHA-256(key authorization)),
    the key authorization being ``token.thumbprint`` (RFC 8555 section 8.4)."""
    digest = hashlib.sha256(f"{token}.{thumbprint}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class AcmeUnavailable(Exception):
    """The CA failed in a way worth retrying (5xx, 408, a network error)."""


class AcmeRejected(PermanentError):
    """The CA refused (4xx); `kind` is the problem type's last part (``orderNotReady``, ...)."""

    def __init__(self, message: str, status: int, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind

    def __reduce__(self) -> tuple[type[AcmeRejected], tuple[str, int, str]]:
        return type(self), (str(self), self.status, self.kind)


@attrs.define
class AcmeClient:
    """The CA's resources, from its directory URL."""

    directory_url: str
    thumbprint: str = ACCOUNT_THUMBPRINT
    http: httpx.Client = attrs.field(factory=lambda: httpx.Client(timeout=TIMEOUT))

    def _post(self, url: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            response = self.http.post(url, json=body or {})
        except httpx.TransportError as e:
            raise AcmeUnavailable(f"POST {url}: {type(e).__name__}: {e}") from e
        return _checked(f"POST {url}", response)

    def new_order(self, domain: str) -> tuple[str, dict[str, Any]]:
        """``POST newOrder``: (the order's URL, the order)."""
        try:
            directory = _checked("GET directory", self.http.get(self.directory_url)).json()
        except httpx.TransportError as e:
            raise AcmeUnavailable(f"GET {self.directory_url}: {e}") from e
        response = self._post(directory["newOrder"],
                              {"identifiers": [{"type": "dns", "value": domain}]})
        return response.headers["Location"], response.json()

    def order(self, url: str) -> dict[str, Any]:
        """``POST`` (as GET) the order."""
        found: dict[str, Any] = self._post(url).json()
        return found

    def authorization(self, url: str) -> dict[str, Any]:
        """``POST`` (as GET) an authorization."""
        found: dict[str, Any] = self._post(url).json()
        return found

    def dns_challenge(self, authorization: dict[str, Any]) -> tuple[str, str]:
        """(the dns-01 challenge's URL, the TXT value to publish)."""
        for challenge in authorization["challenges"]:
            if challenge["type"] == "dns-01":
                return challenge["url"], txt_value(challenge["token"], self.thumbprint)
        raise AcmeRejected("the CA offers no dns-01 challenge", 400, "unsupported")

    def answer(self, challenge_url: str) -> None:
        """``POST {}`` to the challenge: the record is published, check it."""
        self._post(challenge_url)

    def finalize(self, url: str, csr_der: bytes) -> dict[str, Any]:
        """``POST {"csr"}`` to the order's finalize URL: the order."""
        csr = base64.urlsafe_b64encode(csr_der).rstrip(b"=").decode()
        done: dict[str, Any] = self._post(url, {"csr": csr}).json()
        return done

    def download(self, url: str) -> str:
        """``POST`` (as GET) the certificate URL: the PEM chain."""
        pem: str = self._post(url).json()["certificate"]
        return pem


def _checked(what: str, response: httpx.Response) -> httpx.Response:
    status = response.status_code
    if status == 429:
        raise RetryAfter.from_header(response.headers.get("Retry-After"), default=10.0)
    if response.is_success:
        return response
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    kind = str(problem.get("type", "")).rpartition(":")[2] if isinstance(problem, dict) else ""
    detail = problem.get("detail", "") if isinstance(problem, dict) else response.text[:200]
    message = f"{what}: {status} {kind}: {detail}"
    if status >= 500 or status == 408:
        raise AcmeUnavailable(message)
    raise AcmeRejected(message, status, kind)


@attrs.frozen
class Stored:
    """A certificate in place: where, until when, and its serial number (hex)."""

    path: str
    not_after: datetime
    serial: str


@attrs.define
class CertificateFiles:
    """Keys and certificates under `directory`: ``<domain>.pem`` (the chain) and
    ``<domain>.key`` in place; one key per order while it is being issued (so a finalize
    repeated after a lost answer sends the same CSR)."""

    directory: Path

    def current(self, domain: str) -> Stored | None:
        """The certificate in place for `domain`, if any."""
        path = self.directory / f"{domain}.pem"
        if not path.exists():
            return None
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        return Stored(str(path), cert.not_valid_after_utc, f"{cert.serial_number:x}")

    def csr(self, domain: str, order_url: str) -> bytes:
        """A CSR (DER) for `domain` with the key of this order (made on first use)."""
        key_path = self._order_key(domain, order_url)
        if key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            _write_private(key_path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]),
                              critical=False)
               .sign(key, hashes.SHA256()))
        return csr.public_bytes(serialization.Encoding.DER)

    def install(self, domain: str, order_url: str, pem: str) -> Stored:
        """Put the downloaded chain and its order's key in place (each file replaced
        atomically); what is in place now."""
        key_path = self._order_key(domain, order_url)
        if not key_path.exists():
            raise PermanentError(f"the key of order {order_url} is missing from {self.directory}")
        cert = x509.load_pem_x509_certificate(pem.encode())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if cert.public_key() != key.public_key():
            raise PermanentError(f"the certificate from {order_url} is not for this order's key")
        _write_private(self.directory / f"{domain}.key", key_path.read_bytes())
        tmp = self.directory / f".{domain}.pem.tmp"
        tmp.write_text(pem)
        tmp.replace(self.directory / f"{domain}.pem")
        stored = self.current(domain)
        assert stored is not None
        return stored

    def _order_key(self, domain: str, order_url: str) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        tag = hashlib.sha256(order_url.encode()).hexdigest()[:16]
        return self.directory / f"{domain}.{tag}.key"


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)
