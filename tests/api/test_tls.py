"""TLS on vigil-server's API (issue 18): a real server in-process serving HTTPS on
127.0.0.1 with a certificate of a throwaway CA (``support.tls``), the ``vigil`` command
line and the agents' report sender verifying it, and what each says when it cannot."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import wait_until
from support.served import AGENT_KEY, TOKEN, serving
from support.tls import ThrowawayCa

from vigil.agent import main as agent_main
from vigil.agent.libvirt_monitor import ReportSender
from vigil.agent.servers import ServerUrls
from vigil.cli.client import VigilClient
from vigil.cli.main import main as cli_main
from vigil.config import ConfigError, Settings
from vigil.model import GuestFailureKind, GuestReport
from vigil.server import VigilServer
from vigil.wire.keys import host_key
from vigil.wire.tls import client_context


class Pki:
    """The CA clients trust, another CA, and server certificates signed by the first."""

    def __init__(self, directory: Path) -> None:
        self.ca = ThrowawayCa(directory, "vigil test CA")
        self.other_ca = ThrowawayCa(directory, "another CA")
        self.server = self.ca.issue("server", dns=("localhost",), ips=("127.0.0.1",))
        self.elsewhere = self.ca.issue("elsewhere", dns=("other.example",))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VigilServer]:
    """One HTTPS server for the module, host compute-1 in segment rack-a."""
    cert, key = pki.server
    with serving(
        tmp_path_factory.mktemp("served"), api_cert_file=str(cert), api_key_file=str(key)
    ) as (served, _):
        with VigilClient(served.api_url, TOKEN, verify=str(pki.ca.path)) as api:
            api.create_segment("rack-a")
            api.create_host("compute-1", "rack-a")
        yield served


@pytest.fixture
def vigil(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[int, str, str]]:
    """Runs the ``vigil`` command line: its exit code, stdout and stderr."""
    for name in ("OS_CACERT", "OS_CLOUD", "VIGIL_URL", "VIGIL_TOKEN", "VIGIL_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_the_cli_lists_hosts_over_https_with_os_cacert_or_os_cacert_in_the_environment(
    server: VigilServer,
    pki: Pki,
    vigil: Callable[..., tuple[int, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert server.api_url.startswith("https://127.0.0.1:")
    base = ("--url", server.api_url, "--token", TOKEN)
    code, out, err = vigil(*base, "--os-cacert", str(pki.ca.path), "host", "list")
    assert (code, err) == (0, "") and "compute-1" in out
    monkeypatch.setenv("OS_CACERT", str(pki.ca.path))
    code, out, err = vigil(*base, "host", "list")
    assert (code, err) == (0, "") and "compute-1" in out


def test_without_the_ca_the_cli_says_why_in_one_line(
    server: VigilServer, pki: Pki, vigil: Callable[..., tuple[int, str, str]]
) -> None:
    base = ("--url", server.api_url, "--token", TOKEN)
    for tls, verified_with in (
        ((), "the system's trust store"),
        (("--os-cacert", str(pki.other_ca.path)), str(pki.other_ca.path)),
    ):
        code, out, err = vigil(*base, *tls, "host", "list")
        assert code == 1 and out == ""
        assert err == (
            f"error: cannot reach vigil-server at {server.api_url}: TLS certificate not "
            f"trusted: unable to get local issuer certificate (verified with {verified_with}; "
            "--os-cacert FILE gives the CA bundle)\n"
        )


def test_the_cacert_of_a_clouds_yaml_cloud_verifies_the_server(
    server: VigilServer,
    pki: Pki,
    vigil: Callable[..., tuple[int, str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--os-cloud``: the cloud's ``cacert`` verifies vigil's API (and would Keystone's).
    The cloud authenticates with a fixed token (keystoneauth's admin_token), which
    vigil's static-token API takes: no Keystone is needed to see TLS verified."""
    clouds = tmp_path / "clouds.yaml"
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    auth = f"auth_type: admin_token\n    auth: {{token: {TOKEN}, endpoint: '{server.api_url}'}}"
    clouds.write_text(
        f"clouds:\n  tls:\n    {auth}\n    cacert: {pki.ca.path}\n  untrusted:\n    {auth}\n"
    )
    code, out, err = vigil("--url", server.api_url, "--os-cloud", "tls", "host", "list")
    assert (code, err) == (0, "") and "compute-1" in out
    code, _, err = vigil("--url", server.api_url, "--os-cloud", "untrusted", "host", "list")
    assert code == 1 and "TLS certificate not trusted" in err


def test_a_certificate_for_another_name_is_refused_and_the_start_says_which_it_is(
    pki: Pki,
    tmp_path: Path,
    vigil: Callable[..., tuple[int, str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert, key = pki.elsewhere
    with (
        caplog.at_level(logging.INFO, logger="vigil.server"),
        serving(tmp_path, api_cert_file=str(cert), api_key_file=str(key)) as (served, _),
    ):
        base = ("--url", served.api_url, "--token", TOKEN)
        code, _, err = vigil(*base, "--os-cacert", str(pki.ca.path), "host", "list")
        assert code == 1
        assert "certificate not trusted: IP address mismatch, certificate is not valid for " in err
        code, _, err = vigil(*base, "--insecure", "host", "list")  # tests only
        assert (code, err) == (0, "")
    [said] = [r.getMessage() for r in caplog.records if "serves TLS" in r.getMessage()]
    assert said.startswith(
        "vigil-server: the API serves TLS with the certificate CN=other.example "
        "(DNS:other.example), valid until 20"
    )


def test_plain_http_to_the_tls_port_is_not_served(server: VigilServer) -> None:
    plain = server.api_url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/healthz", timeout=5)


def guest_report() -> GuestReport:
    return GuestReport(
        str(uuid.uuid4()), "compute-1", f"inst-{uuid.uuid4()}", GuestFailureKind.CRASHED, 1.0
    )


def test_the_agents_report_sender_delivers_a_signed_report_over_https(
    server: VigilServer, pki: Pki
) -> None:
    sender = ReportSender(
        host="compute-1",
        server_url=server.api_url,
        key=host_key(AGENT_KEY, "compute-1").encode(),
        tls=client_context(str(pki.ca.path)),  # [agent] api_ca_file
    )
    report = guest_report()
    sender.start()
    try:
        sender.put(report)
        wait_until(lambda: sender.sent == 1, "the report accepted", 10)
    finally:
        sender.stop()
    with VigilClient(server.api_url, TOKEN, verify=str(pki.ca.path)) as api:
        failures = api.list_guest_failures(instance_id=report.instance_id)
    assert [f["kind"] for f in failures] == ["crashed"]


def test_with_a_wrong_ca_the_agent_says_why_once_and_keeps_retrying(
    server: VigilServer,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[float] = []
    post = ServerUrls.post

    def counted(self: ServerUrls, *args: Any) -> str | None:
        attempts.append(time.monotonic())
        return post(self, *args)

    monkeypatch.setattr(ServerUrls, "post", counted)
    sender = ReportSender(
        host="compute-1",
        server_url=server.api_url,
        key=host_key(AGENT_KEY, "compute-1").encode(),
        tls=client_context(str(pki.other_ca.path)),
        backoff_max=0.05,
    )
    with caplog.at_level(logging.WARNING, logger="vigil.agent"):
        sender.start()
        try:
            sender.put(guest_report())
            wait_until(lambda: len(attempts) >= 4, "four attempts", 10)
        finally:
            sender.stop()
    assert sender.sent == 0 and sender.pending() == 1
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == [
        f"host compute-1: guest failure reports not accepted ({server.api_url}/v1/agents/"
        "compute-1/reports: TLS certificate not trusted: unable to get local issuer "
        "certificate (verified with [agent] api_ca_file, else the system's trust store)); "
        "retrying until they are"
    ]


def test_an_unreadable_api_ca_file_refuses_the_agents_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "agent.conf"
    conf.write_text("[agent]\nkey = k\napi_ca_file = /nonexistent/ca.pem\n")
    assert agent_main.main(["--config-file", str(conf)]) == 2
    assert (
        "configuration refused: agent.api_ca_file: cannot read the CA bundle "
        "/nonexistent/ca.pem: No such file or directory" in caplog.text
    )


@pytest.mark.parametrize(
    ("files", "refusal"),
    [
        (("server.pem", None), "api.key_file must be set too"),
        ((None, "server.key"), "api.cert_file must be set too"),
        (("missing.pem", "server.key"), "api.cert_file: cannot read {d}/missing.pem: No such"),
        (
            ("server.pem", "elsewhere.key"),
            "api.cert_file {d}/server.pem and api.key_file {d}/elsewhere.key are not a PEM "
            "certificate and its private key: key values mismatch",
        ),
        (
            ("server.key", "server.key"),
            "api.cert_file {d}/server.key and api.key_file {d}/server.key are not a PEM "
            "certificate and its private key: ",
        ),
    ],
)
def test_a_certificate_and_key_that_cannot_serve_are_refused_at_start(
    pki: Pki, tmp_path: Path, files: tuple[str | None, str | None], refusal: str
) -> None:
    d = pki.ca.path.parent
    cert, key = (str(d / f) if f else None for f in files)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/v.db", api_cert_file=cert, api_key_file=key
    )
    with pytest.raises(ConfigError, match="^" + re.escape(refusal.format(d=d))):
        VigilServer(settings)
