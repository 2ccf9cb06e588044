"""Schemathesis against the OpenAPI documents — vigil's (/openapi.json) and its Masakari
API's (/instance-ha/openapi.json) — served by a real vigil-server on the simulated cloud:
every check (server errors, status codes, content types, response schemas and headers,
negative data rejected, auth enforced, Allow on 405 …), the stateful phase following the
documents' links, deterministic generation and a time budget (75 s each).

The documents are the API: 0 server errors and 0 responses outside them. The run is
Schemathesis's own CLI (a subprocess, hence ``slow``) with the config file below, so a
failure prints its reproducing ``curl``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vigil.cli.demo import DemoOptions, Harness

pytestmark = pytest.mark.slow
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"

# Where the documents cannot say what the API checks, a schema-valid request may still be
# refused with a 422 naming the field: fencing options (each driver's own rules,
# validated when a host is created so that a bad level is not found at 3 a.m.) and a
# subscription's URL and event types (parsed, and matched against vigil's catalogue).
CONFIG = """
[checks]
enabled = true

# The stateful phase follows the links the document declares (creation → read, update,
# delete). Links inferred by dependency analysis would also chain POST /v1/hosts to
# GET /v1/hosts/{name}/services, which is rightly 404 until the host's agent reports.
[phases.stateful]
max-steps = 6
inference.algorithms = ["location-headers"]
generation.max-examples = 30

[[operations]]
include-path-regex = "^/v1/(hosts(/\\\\{name\\\\})?|host-batches)$"
include-method-regex = "^(POST|PATCH)$"
checks.positive_data_acceptance.enabled = false

# PATCH /v1/hosts/{name} answers 404 for the segment its body names when that segment
# does not exist (the host itself exists): not a created resource gone missing.
[[operations]]
include-path = "/v1/hosts/{name}"
include-method = "PATCH"
checks.ensure_resource_availability.enabled = false

[[operations]]
include-path = "/v1/subscriptions"
include-method = "POST"
checks.positive_data_acceptance.enabled = false
"""


@pytest.fixture(scope="module")
def h() -> Iterator[Harness]:
    with Harness(DemoOptions(hosts=2, instances=2)) as harness:
        yield harness


# Masakari's own validation goes beyond any schema (a host must be a Nova compute, a
# notification's payload follows its type, a duplicate is refused): a schema-valid body
# may be a 400 there, as on Masakari itself.
MASAKARI_CONFIG = """
[checks]
enabled = true
positive_data_acceptance.enabled = false

[phases.stateful]
max-steps = 6
inference.algorithms = ["location-headers"]
"""


def schemathesis(
    url: str, token_header: str, tmp_path: Path, *extra: str, config_text: str = CONFIG
) -> subprocess.CompletedProcess[str]:
    if not SCHEMATHESIS.exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    config = tmp_path / "schemathesis.toml"
    config.write_text(config_text)
    return subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(config),
            "run",
            url,
            # Every check is on by default; "--checks all" on the command line would also
            # override the per-operation exceptions of the config file.
            "--seed",
            "13",
            "--max-examples",
            "8",
            "--generation-deterministic",
            "--generation-allow-x00",
            "false",  # NUL in a name is refused by PostgreSQL, not by SQLite: not this run's
            "--request-timeout",
            "10",
            "--max-time",
            "75",
            "-H",
            token_header,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_the_native_api_is_its_openapi_document(h: Harness, tmp_path: Path) -> None:
    started = time.monotonic()
    result = schemathesis(
        f"{h.server.api_url}/openapi.json",
        f"Authorization: Bearer {h.settings.api_token}",
        tmp_path,
        # A server-sent event stream never ends: its validation is tests/api/test_bad_input.
        "--exclude-path",
        "/v1/events/stream",
    )
    summary = result.stdout[-3000:]
    print(summary, f"\n(schemathesis took {time.monotonic() - started:.1f}s)")
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-3000:]


def test_the_masakari_api_is_its_openapi_document(h: Harness, tmp_path: Path) -> None:
    started = time.monotonic()
    result = schemathesis(
        f"{h.server.api_url}/instance-ha/openapi.json",
        f"X-Auth-Token: {h.settings.api_token}",
        tmp_path,
        config_text=MASAKARI_CONFIG,
    )
    summary = result.stdout[-3000:]
    print(summary, f"\n(schemathesis took {time.monotonic() - started:.1f}s)")
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-3000:]
