"""TLS on vigil-server's API: the server's certificate, and how clients verify it.

The server serves HTTPS when ``[api] cert_file`` and ``key_file`` are set
(``server_certificate`` checks them at start and says what the certificate is); its
clients — the agents' report senders, the ``vigil`` command line — verify it against a
CA bundle (``client_context``) and say in one line why a connection was refused
(``tls_failure``). Heartbeats are signed UDP datagrams and do not use TLS.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from vigil.config import ConfigError


@dataclass(frozen=True)
class Certificate:
    """What the log says of the server's certificate."""

    subject: str  # RFC 4514, e.g. "CN=vigil.example"
    names: tuple[str, ...]  # its subjectAltName entries, "DNS:..." and "IP:..."
    not_after: datetime  # UTC

    def __str__(self) -> str:
        names = ", ".join(self.names) or "no subjectAltName: clients will refuse it"
        return f"{self.subject} ({names}), valid until {self.not_after:%Y-%m-%d %H:%M} UTC"


def server_certificate(cert_file: str | None, key_file: str | None) -> Certificate:
    """Check ``[api] cert_file`` and ``key_file`` (both given, readable, a PEM certificate
    and its private key) and describe the certificate; ConfigError names the option."""
    if not cert_file or not key_file:
        missing = "api.key_file" if cert_file else "api.cert_file"
        raise ConfigError(f"{missing} must be set too: api.cert_file and key_file go together")
    for option, path in (("api.cert_file", cert_file), ("api.key_file", key_file)):
        try:
            Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:  # OpenSSL's reason, e.g. KEY_VALUES_MISMATCH
        why = exc.reason.replace("_", " ").lower() if exc.reason else str(exc)
        raise ConfigError(
            f"api.cert_file {cert_file} and api.key_file {key_file} are not a PEM certificate "
            f"and its private key: {why}"
        ) from None
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())  # the first: the leaf
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names: tuple[str, ...] = ()
    else:
        names = tuple(f"DNS:{n}" for n in alt.get_values_for_type(x509.DNSName)) + tuple(
            f"IP:{ip}" for ip in alt.get_values_for_type(x509.IPAddress)
        )
    return Certificate(cert.subject.rfc4514_string(), names, cert.not_valid_after_utc)


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """How a client verifies the server: against the PEM bundle ``ca_file``, else the
    system's trust store. ValueError says why ``ca_file`` cannot be used."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ValueError(f"cannot read the CA bundle {ca_file}: {why}") from None


def tls_failure(exc: BaseException, hint: str = "") -> str | None:
    """Why a connection failed, if TLS refused it (``exc`` or what caused it): the
    certificate not trusted (followed by ``hint``: what it was verified with), or the
    handshake itself; None for any other failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted: {seen.verify_message}{hint}"
        if isinstance(seen, ssl.SSLError):
            return f"TLS handshake failed: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__
    return None
