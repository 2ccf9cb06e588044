"""The agent's HTTP reports to several vigil-servers: the first that answers takes them.

Several vigil-servers share the hosts (any of them accepts an agent's reports and records
them for the owner of the host's segment). An agent is configured with every server's API
URL; ``ServerUrls.post`` posts a signed body to the one that last answered, and on a
connection error, a timeout or a 5xx goes on to the next one, in order, wrapping around.
A 4xx is the server's final word on that body (refused signature, malformed report): the
others would say the same, so they are not asked. ``ServerUrls.exchange`` does the same
and returns the accepting server's response, for a sender that reads the answer (the
application checks: their answer is the plan).

An ``https://`` server's certificate is always verified, against ``[agent] api_ca_file``
or the system's trust store (``vigil.wire.tls``); a certificate not trusted is a failure
like a refused connection (the next server is tried, the report is retried), said with
its cause. ``Failures`` logs a sender's failures once per change of cause.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence

import httpx

from vigil.wire.reports import SIGNATURE_HEADER, sign
from vigil.wire.tls import client_context, tls_failure

LOG = logging.getLogger(__name__)
_VERIFIED_WITH = " (verified with [agent] api_ca_file, else the system's trust store)"


def urls_given(server_url: str, server_urls: Sequence[str] | None) -> list[str]:
    """The URLs a sender was given: ``server_url`` (one) or ``server_urls`` (several),
    exactly one of the two; ValueError otherwise."""
    if bool(server_url) == (server_urls is not None):
        raise ValueError("give exactly one of server_url and server_urls")
    urls = [server_url] if server_url else list(server_urls or ())
    if not urls or not all(urls):
        raise ValueError(f"server URLs must not be empty: {urls!r}")
    return [u.rstrip("/") for u in urls]


class ServerUrls:
    """Several base URLs of vigil-server's API; remembers which one last answered.

    Not thread-safe: each sender thread keeps its own. ``tls`` verifies the servers'
    certificates (None: against the system's trust store).
    """

    def __init__(self, urls: Sequence[str], tls: ssl.SSLContext | None = None) -> None:
        if not urls:
            raise ValueError("no server URL")
        self.urls = [u.rstrip("/") for u in urls]
        self._current = 0  # index of the URL that last answered: the first one tried
        self._tls = tls

    def client(self, timeout: float, transport: httpx.BaseTransport | None = None) -> httpx.Client:
        """An HTTP client for these servers, verifying their certificates."""
        verify = self._tls if self._tls is not None else client_context(None)
        return httpx.Client(timeout=timeout, transport=transport, verify=verify)

    @property
    def current(self) -> str:
        return self.urls[self._current]

    def post(self, client: httpx.Client, path: str, body: bytes, key: bytes) -> str | None:
        """POST ``body`` signed with ``key`` to ``path`` on the first server that answers.

        None when a server accepted it (2xx); else why not — every server's error when
        none answered or all failed with a 5xx, or the one 4xx that ended the attempt.
        """
        answer = self.exchange(client, path, body, key)
        return answer if isinstance(answer, str) else None

    def exchange(
        self, client: httpx.Client, path: str, body: bytes, key: bytes
    ) -> httpx.Response | str:
        """As ``post``, for a sender that reads the answer: the 2xx response of the
        server that accepted the body, else why none did (the same text as ``post``)."""
        headers = {SIGNATURE_HEADER: sign(body, key), "Content-Type": "application/json"}
        errors: list[str] = []
        n = len(self.urls)
        for i in range(n):
            index = (self._current + i) % n
            url = f"{self.urls[index]}{path}"
            try:
                response = client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:  # unreachable, refused, timed out: the next one
                why = tls_failure(exc, _VERIFIED_WITH)
                errors.append(f"{url}: {why or str(exc) or type(exc).__name__}")
                continue
            status = response.status_code
            if status // 100 == 5:  # this server cannot take it now: the next one may
                errors.append(f"{url}: HTTP {status}: {response.text[:200]}")
                continue
            if index != self._current and n > 1:
                LOG.info("reports now go to %s (%s)", self.urls[index], "; ".join(errors))
            self._current = index  # it answered: start there next time
            if status // 100 == 2:
                return response
            return f"{url}: HTTP {status}: {response.text[:200]}"  # 4xx: final
        return "; ".join(errors)


class Failures:
    """A sender's failures, logged once per change of their cause, not at every retry;
    and the first success after them."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what  # e.g. "host c1: reports"
        self.last = ""  # why the last attempt failed; "" once one succeeded

    def failed(self, error: str) -> None:
        if error != self.last:
            self._log.warning("%s not accepted (%s); retrying until they are", self._what, error)
        self.last = error

    def succeeded(self) -> None:
        if self.last:
            self._log.info("%s accepted again", self._what)
        self.last = ""
