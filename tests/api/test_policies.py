"""Who may call what, without Keystone: every route of both APIs has its policy rule, the
sample policy file is current, the static token is an admin's, and an operator's policy
file changes a default (oslo.policy reads ``[oslo_policy] policy_file``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from oslo_config import cfg
from starlette.routing import Mount
from support.served import TOKEN, serving

from vigil.api import policies
from vigil.api.auth import Authority, Caller, StaticToken
from vigil.server import VigilServer

ROOT = Path(__file__).resolve().parents[2]
# Routes a caller's token does not open: the agents' (signed by the agent key), the
# application's heartbeat (its own credential), health and metrics, Masakari's versions.
UNGUARDED = {"healthz", "prometheus_metrics", "agent_reports", "agent_services", "agent_app"}
UNGUARDED |= {"app_heartbeat", "fence"}  # the cluster's token (issue 19)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[VigilServer]:
    with serving(tmp_path) as (server, _cloud):
        yield server


def test_every_route_of_both_apis_has_a_rule(server: VigilServer) -> None:
    native, masakari = [], []
    for route in server.app.routes:
        if isinstance(route, Mount) and route.path == "/instance-ha":
            for sub in route.routes:
                op = getattr(sub, "operation_id", None)
                if op and not op.endswith("_in_project") and "version" not in op:
                    masakari.append(op)
        elif getattr(route, "path", "").startswith(("/v1", "/healthz", "/metrics")):
            native.append(route.name)
    assert len(native) > 40 and len(masakari) == 15
    assert [n for n in native if n not in UNGUARDED and policies.native_rule(n) is None] == []
    assert [n for n in masakari if policies.masakari_rule(n) is None] == []
    # Every rule is registered, so that a policy file can name it.
    names = {r.name for r in policies.list_rules()}
    assert {policies.native_rule(n) for n in native if n not in UNGUARDED} <= names
    assert {policies.masakari_rule(n) for n in masakari} <= names


def test_the_sample_policy_file_is_current(tmp_path: Path) -> None:
    out = tmp_path / "policy.yaml"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from oslo_policy.generator import generate_sample;"
            "sys.exit(generate_sample(args=sys.argv[1:]))",
            "--namespace",
            "vigil",
            "--output-file",
            str(out),
        ],
        check=True,
    )
    committed = (ROOT / "etc" / "vigil.policy.yaml.sample").read_text()
    assert out.read_text() == committed, (
        "etc/vigil.policy.yaml.sample is stale: run "
        "oslopolicy-sample-generator --config-file etc/vigil-policy-generator.conf"
    )


def test_the_default_rules() -> None:
    authority = Authority.static(TOKEN)
    admin = Caller("u", "p", frozenset({"admin", "member", "reader"}))
    cloud_reader = Caller("u", None, frozenset({"reader"}), system_scope="all")
    project_member = Caller("u", "p", frozenset({"reader", "member"}))
    project_reader = Caller("u", "p", frozenset({"reader"}))
    callers = (admin, cloud_reader, project_member, project_reader)
    # The target of a project's rules is the project that owns the record: "p" here.
    for rule, allowed in (
        ("vigil:hosts:list", {admin, cloud_reader}),
        ("vigil:hosts:delete", {admin}),
        ("vigil:apps:credential", {admin, project_member}),
        ("vigil:instances:get", {admin, cloud_reader, project_member, project_reader}),
        ("vigil:instances:evacuate", {admin, project_member}),
        ("vigil:all_projects", {admin, cloud_reader}),
        ("os_masakari_api:segments:index", {admin}),
    ):
        for caller in callers:
            allows = authority.allows(rule, caller, {"project_id": "p"})
            assert allows == (caller in allowed), (rule, caller)
    # ... and another project's record is no project member's.
    for caller in (project_member, project_reader):
        assert not authority.allows("vigil:instances:get", caller, {"project_id": "q"})
    assert authority.scope(project_member).project_id == "p"
    assert authority.scope(cloud_reader).project_id is None


def test_the_static_token_is_an_admins_and_nothing_else_passes() -> None:
    assert StaticToken(TOKEN).caller(TOKEN) == Caller(
        "api-token", roles=frozenset({"admin"}), name="the API token"
    )
    assert StaticToken(TOKEN).caller("other") is None
    assert StaticToken("").caller("") is None  # no token configured: nothing opens


def test_an_operators_policy_file_changes_a_default(
    tmp_path: Path, server: VigilServer, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "policy.yaml").write_text('"vigil:hosts:list": "!"\n')
    (tmp_path / "vigil.conf").write_text(f"[oslo_policy]\npolicy_file = {tmp_path}/policy.yaml\n")
    conf = cfg.ConfigOpts()
    conf(args=[], default_config_files=[str(tmp_path / "vigil.conf")], default_config_dirs=[])
    authority = Authority.static(TOKEN, conf)
    from vigil.api.app import create_app

    app = create_app(
        store=server.store,
        engine=server.engine,
        compute=server.compute,
        token=TOKEN,
        clock=server.clock,
        heartbeat_age=server.heartbeats.age,
        defaults=server.settings.recovery,
        authority=authority,
    )
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        refused = client.get("/v1/hosts", headers=headers)
        assert refused.status_code == 403
        assert refused.json() == {"detail": "policy does not allow vigil:hosts:list"}
        assert client.get("/v1/segments", headers=headers).status_code == 200
        assert client.get("/v1/hosts").status_code == 401
    assert "refused by policy vigil:hosts:list" in caplog.text
