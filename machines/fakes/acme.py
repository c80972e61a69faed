"""A fake certificate authority speaking an ACME-style dialect (RFC 8555's resources, JSON, no JWS).

The resources and their life cycle follow RFC 8555: ``GET /directory``; ``POST /acme/new-order``
(201, ``Location`` the order's URL) with ``{"identifiers": [{"type": "dns", "value": ...}]}``;
the order lists ``authorizations`` and its ``finalize`` URL; ``POST`` (as GET) an authorization
to see its ``dns-01`` challenge (``token``, ``url``); ``POST`` the challenge to have it checked;
the CA then looks up the TXT record ``_acme-challenge.<domain>`` (through `resolve_txt`: by
default the records of every fake Cloudflare API in this process) and the authorization goes
``pending`` -> ``valid`` (or ``invalid`` when the record holds the wrong value);
``POST {"csr": base64url(DER)}`` to ``finalize``, the order goes ``processing`` -> ``valid``
with a ``certificate`` URL; ``POST`` that URL to download the chain. Errors are RFC 7807
problem documents (``urn:ietf:params:acme:error:...``), and ``429`` comes with ``Retry-After``.

Where it differs from a real CA (so a real deployment needs a real ACME client, e.g. the
``acme`` package, in place of `machines.cloudflare.acme.AcmeClient`): requests are not JWS-signed
and there are no nonces or account keys (the key authorization is ``token.ACCOUNT_THUMBPRINT``
with a fixed thumbprint); the certificate comes as JSON ``{"certificate": PEM}``, not as
``application/pem-certificate-chain``. The certificates are real X.509, signed by a throw-away
CA key, valid `lifetime` from `now()`.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from machines.fakes.cloudflare import CloudflareService
from machines.fakes.server import FakeService, Reply, Request, route

__all__ = ["ACCOUNT_THUMBPRINT", "FAKE", "AcmeService", "txt_value"]

ACCOUNT_THUMBPRINT = "fake-account-thumbprint"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def txt_value(token: str, thumbprint: str = ACCOUNT_THUMBPRINT) -> str:
    """The TXT record value for a dns-01 challenge (RFC 8555 section 8.4)."""
    return b64url(hashlib.sha256(f"{token}.{thumbprint}".encode()).digest())


def _problem(status: int, kind: str, detail: str) -> Reply:
    return status, {"type": f"urn:ietf:params:acme:error:{kind}", "detail": detail,
                    "status": status}


class AcmeService(FakeService):
    """Orders, authorizations and certificates in memory."""

    name = "acme"
    env_var = "ACME_URL"  # the directory is at ACME_URL/directory
    default_port = 8730

    def __init__(self, *, resolve_txt: Callable[[str], list[str]] | None = None,
                 now: Callable[[], datetime] | None = None,
                 lifetime: timedelta = timedelta(days=90), validate_after: int = 1,
                 issue_after: int = 1, port: int = 0, host: str = "127.0.0.1") -> None:
        super().__init__(port=port, host=host)
        # By default, the TXT records of the fake Cloudflare APIs of this process.
        self.resolve_txt = resolve_txt or CloudflareService.resolve_txt
        self.now = now or (lambda: datetime.now(UTC))
        self.lifetime = lifetime
        # How many looks at an authorization (an order) after the challenge (the finalize)
        # before it is decided: a poll that comes back "pending" first, as a real CA's does.
        self.validate_after = validate_after
        self.issue_after = issue_after
        self.orders: dict[str, dict[str, Any]] = {}
        self.authzs: dict[str, dict[str, Any]] = {}
        self.issued: list[x509.Certificate] = []
        self._ids = (str(n) for n in itertools.count(1))
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake ACME CA")])
        start = datetime(2020, 1, 1, tzinfo=UTC)
        self._ca_name = name
        self.ca_certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self._ca_key.public_key()).serial_number(1)
            .not_valid_before(start).not_valid_after(start + timedelta(days=365 * 30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._ca_key, hashes.SHA256()))

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"orders": self.orders, "authorizations": self.authzs,
                    "issued": [c.subject.rfc4514_string() for c in self.issued]}

    def _url(self, path: str) -> str:
        return f"{self.url}{path}"

    @route("GET /directory")
    def directory(self, request: Request) -> Reply:
        return 200, {"newOrder": self._url("/acme/new-order"),
                     "newNonce": self._url("/acme/new-nonce"),
                     "newAccount": self._url("/acme/new-account")}

    @route("POST /acme/new-order")
    def new_order(self, request: Request) -> Reply:
        body = request.body if isinstance(request.body, dict) else {}
        identifiers = body.get("identifiers")
        if not (isinstance(identifiers, list) and len(identifiers) == 1
                and isinstance(identifiers[0], dict) and identifiers[0].get("type") == "dns"
                and isinstance(identifiers[0].get("value"), str)):
            return _problem(400, "malformed", "one identifier of type dns is expected")
        domain = identifiers[0]["value"]
        if domain.endswith(".invalid"):
            return _problem(400, "rejectedIdentifier", f"{domain} is not a name we issue for")
        order_id, authz_id = next(self._ids), next(self._ids)
        self.authzs[authz_id] = {
            "status": "pending", "identifier": {"type": "dns", "value": domain},
            "challenges": [{"type": "dns-01", "url": self._url(f"/acme/chall/{authz_id}"),
                            "token": b64url(hashlib.sha256(authz_id.encode()).digest())[:32],
                            "status": "pending"}],
            "_looks": 0}
        self.orders[order_id] = {
            "status": "pending", "identifiers": identifiers,
            "expires": (self.now() + timedelta(days=7)).isoformat(),
            "authorizations": [self._url(f"/acme/authz/{authz_id}")],
            "finalize": self._url(f"/acme/order/{order_id}/finalize"), "_looks": 0,
            "_authz": authz_id}
        return 201, _public(self.orders[order_id]), {
            "Location": self._url(f"/acme/order/{order_id}")}

    @route("POST /acme/authz/{authz_id}")
    def authorization(self, request: Request, authz_id: str) -> Reply:
        authz = self.authzs.get(authz_id)
        if authz is None:
            return _problem(404, "malformed", f"no authorization {authz_id}")
        challenge = authz["challenges"][0]
        if challenge["status"] == "processing":
            authz["_looks"] += 1
            if authz["_looks"] >= self.validate_after:
                name = f"_acme-challenge.{authz['identifier']['value']}"
                expected = txt_value(challenge["token"])
                found = self.resolve_txt(name)
                ok = expected in found
                challenge["status"] = authz["status"] = "valid" if ok else "invalid"
                if not ok:
                    challenge["error"] = {
                        "type": "urn:ietf:params:acme:error:incorrectResponse",
                        "detail": f"TXT {name}: expected {expected!r}, found {found!r}"}
        return 200, _public(authz)

    @route("POST /acme/chall/{authz_id}")
    def challenge(self, request: Request, authz_id: str) -> Reply:
        authz = self.authzs.get(authz_id)
        if authz is None:
            return _problem(404, "malformed", f"no challenge {authz_id}")
        challenge = authz["challenges"][0]
        if challenge["status"] == "pending":
            challenge["status"] = "processing"
        return 200, dict(challenge)

    @route("POST /acme/order/{order_id}")
    def order(self, request: Request, order_id: str) -> Reply:
        order = self.orders.get(order_id)
        if order is None:
            return _problem(404, "malformed", f"no order {order_id}")
        authz = self.authzs[order["_authz"]]
        if order["status"] == "pending" and authz["status"] in ("valid", "invalid"):
            order["status"] = "ready" if authz["status"] == "valid" else "invalid"
        if order["status"] == "processing":
            order["_looks"] += 1
            if order["_looks"] >= self.issue_after:
                self._issue(order_id, order)
        return 200, _public(order)

    @route("POST /acme/order/{order_id}/finalize")
    def finalize(self, request: Request, order_id: str) -> Reply:
        order = self.orders.get(order_id)
        if order is None:
            return _problem(404, "malformed", f"no order {order_id}")
        self.order(request, order_id)  # brings its status up to date
        if order["status"] != "ready":
            return _problem(403, "orderNotReady", f"order {order_id} is {order['status']}")
        body = request.body if isinstance(request.body, dict) else {}
        try:
            der = base64.urlsafe_b64decode(str(body.get("csr", "")) + "==")
            csr = x509.load_der_x509_csr(der)
        except ValueError as e:
            return _problem(400, "badCSR", f"the CSR does not parse: {e}")
        domain = order["identifiers"][0]["value"]
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names or names[0].value != domain:
            return _problem(400, "badCSR", f"the CSR is not for {domain}")
        order["_csr"] = csr
        order["status"] = "processing"
        return 200, _public(order)

    @route("POST /acme/cert/{order_id}")
    def certificate(self, request: Request, order_id: str) -> Reply:
        order = self.orders.get(order_id)
        if order is None or "_pem" not in order:
            return _problem(404, "malformed", f"no certificate for order {order_id}")
        return 200, {"certificate": order["_pem"]}

    def _issue(self, order_id: str, order: dict[str, Any]) -> None:
        csr: x509.CertificateSigningRequest = order["_csr"]
        domain = order["identifiers"][0]["value"]
        now = self.now()
        cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(self._ca_name)
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=1))
                .not_valid_after(now + self.lifetime)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]),
                               critical=False)
                .sign(self._ca_key, hashes.SHA256()))
        self.issued.append(cert)
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        pem += self.ca_certificate.public_bytes(serialization.Encoding.PEM).decode()
        order["_pem"] = pem
        order["status"] = "valid"
        order["certificate"] = self._url(f"/acme/cert/{order_id}")


def _public(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource as the CA shows it (without its private bookkeeping)."""
    return {k: (v if k != "challenges" else [dict(c) for c in v])
            for k, v in resource.items() if not k.startswith("_")}


FAKE = AcmeService
