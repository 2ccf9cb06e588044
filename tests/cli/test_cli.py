"""The ``vigil`` command line against a real vigil-server started in-process.

Each test drives ``main(argv)`` the way an operator types commands and checks what they
would see: the tables, the ``--json`` documents, the exit status and the one-line errors
(never a traceback, never the token, never a fence password).
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import wait_until
from support.cli import InProcess, Result, table_fields, table_rows
from support.served import AGENT_KEY, TOKEN, bearer, serving

from vigil.cli import output
from vigil.cli.main import fence_method, main
from vigil.model import GuestFailureKind, GuestReport, HaPolicy, ServiceState
from vigil.server import VigilServer
from vigil.sim.agents import SimAgents
from vigil.sim.cloud import SimCloud
from vigil.wire.keys import host_key
from vigil.wire.reports import SIGNATURE_HEADER, encode_reports, encode_services, sign

SECRET = "s3cret"


class Cli(InProcess):
    """Runs ``vigil --url URL --token TOKEN ...`` and keeps every output it produced."""

    def __call__(self, *args: str, token: str | None = TOKEN) -> Result:
        argv = ["--url", self.url, *(["--token", token] if token is not None else []), *args]
        return self.run(lambda: main(argv))

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.code == 0, result.err
        assert result.err == ""
        return result


@dataclass
class World:
    server: VigilServer
    cloud: SimCloud
    cli: Cli

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.api_url, headers=bearer())


@pytest.fixture
def world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[World]:
    with serving(
        tmp_path,
        hosts=("compute-1", "compute-2", "compute-3"),
        accept_master_key=True,  # SimAgents sign every host's heartbeats with it
    ) as (server, cloud):
        yield World(server, cloud, Cli(server.api_url, capsys))


@pytest.fixture
def cli(world: World) -> Cli:
    return world.cli


# ------------------------------------------------------------------------------ segments


def test_segment_create_list_show_update_delete_as_tables(cli: Cli) -> None:
    created = cli.ok(
        "segment", "create", "az1", "--description", "rack 1", "--default-policy", "notify"
    )
    assert created.fields() == {
        "name": "az1",
        "default policy": "notify",
        "max failed share": "0.5",
        "max parallel evacuations": "8",
        "paused": "no",
        "pause reason": "-",
        "description": "rack 1",
    }
    cli.ok("segment", "create", "az2", "--max-parallel-evacuations", "2")

    listed = cli.ok("segment", "list")
    header, rule = listed.out.splitlines()[:2]
    assert header.split("  ")[0] == "NAME"
    assert "DEFAULT POLICY" in header and "PAUSED" in header
    # Columns line up: every value starts where its header starts.
    col = header.index("DEFAULT POLICY")
    assert [line[col:].split()[0] for line in listed.out.splitlines()[2:]] == ["notify", "off"]
    assert rule.startswith("----  ")
    assert [r[0] for r in listed.rows()] == ["az1", "az2"]

    updated = cli.ok(
        "segment",
        "update",
        "az1",
        "--default-policy",
        "keep-running",
        "--max-failed-share",
        "0.25",
    )
    assert updated.fields()["default policy"] == "keep-running"
    assert updated.fields()["max failed share"] == "0.25"
    assert updated.fields()["description"] == "rack 1"  # untouched
    assert cli.ok("segment", "show", "az1").fields()["default policy"] == "keep-running"

    deleted = cli.ok("segment", "delete", "az2")
    assert deleted.out.strip() == "segment az2 deleted"
    gone = cli("segment", "show", "az2")
    assert gone.code == 1
    assert gone.out == ""
    assert gone.err.startswith("error: 404: ")
    assert "az2" in gone.err


def test_segment_json_is_the_api_document(world: World, cli: Cli) -> None:
    created = cli.ok("--json", "segment", "create", "az1", "--max-failed-share", "0.3")
    assert created.json() == {
        "name": "az1",
        "description": "",
        "default_policy": "off",
        "max_failed_share": 0.3,
        "max_parallel_evacuations": 8,
        "paused": False,
        "pause_reason": "",
    }
    with world.api() as api:
        assert cli.ok("segment", "list", "--json").json() == api.get("/v1/segments").json()
        assert (
            cli.ok("segment", "show", "az1", "--json").json() == api.get("/v1/segments/az1").json()
        )
    # Scripts get nothing to parse from a delete (the API answers 204 with no body).
    assert cli.ok("--json", "segment", "delete", "az1").out == ""
    assert cli.ok("--json", "segment", "list").json() == []


def test_bad_segment_values_name_the_field_and_create_nothing(cli: Cli) -> None:
    share = cli("segment", "create", "az1", "--max-failed-share", "2")
    assert share.code == 1
    assert share.err.startswith("error: 422: max_failed_share: ")
    assert "less than or equal to 1" in share.err
    parallel = cli("segment", "create", "az1", "--max-parallel-evacuations", "0")
    assert parallel.code == 1
    assert "max_parallel_evacuations" in parallel.err
    name = cli("segment", "create", "-bad")
    assert name.code == 2  # argparse: "-bad" is not a segment name but an option
    assert cli.ok("--json", "segment", "list").json() == []

    cli.ok("segment", "create", "az1")
    refused = cli("segment", "update", "az1", "--max-failed-share", "-0.1")
    assert refused.code == 1
    assert "max_failed_share" in refused.err
    assert cli.ok("segment", "show", "az1").fields()["max failed share"] == "0.5"


def test_segment_resume_clears_a_pause(world: World, cli: Cli) -> None:
    cli.ok("segment", "create", "az1")
    with world.api() as api:
        api.patch("/v1/segments/az1", json={"paused": True}).raise_for_status()
    assert cli.ok("segment", "show", "az1").fields()["paused"] == "yes"
    resumed = cli.ok("segment", "resume", "az1")
    assert resumed.fields()["paused"] == "no"
    assert resumed.fields()["pause reason"] == "-"


def test_conflicts_are_reported_not_raised(cli: Cli) -> None:
    cli.ok("segment", "create", "az1")
    again = cli("segment", "create", "az1")
    assert again.code == 1
    assert again.err.startswith("error: 409: ")
    cli.ok("host", "create", "compute-1", "--segment", "az1")
    busy = cli("segment", "delete", "az1")
    assert busy.code == 1
    assert busy.err.startswith("error: 409: ")
    assert cli.ok("segment", "show", "az1").code == 0


# --------------------------------------------------------------------------------- hosts


def test_host_create_list_show_update_delete(cli: Cli) -> None:
    cli.ok("segment", "create", "az1")
    cli.ok("segment", "create", "az2")
    created = cli.ok(
        "host",
        "create",
        "compute-1",
        "--segment",
        "az1",
        "--reserved",
        "--fence",
        "sim:host=compute-1",
    )
    assert created.fields()["reserved"] == "yes"
    assert created.fields()["maintenance"] == "no"
    assert created.fields()["state"] == "new"
    assert created.fields()["fencing"] == "sim:host=compute-1"
    cli.ok("host", "create", "compute-2", "--segment", "az2", "--maintenance")

    rows = cli.ok("host", "list").rows()
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        ("compute-1", "az1", "new", "no", "yes"),
        ("compute-2", "az2", "new", "yes", "no"),
    ]
    assert [r[0] for r in cli.ok("host", "list", "--segment", "az2").rows()] == ["compute-2"]

    shown = cli.ok("host", "show", "compute-1", "--json").json()
    assert shown["fencing"] == [{"driver": "sim", "options": {"host": "compute-1"}}]
    assert shown["reserved"] is True

    updated = cli.ok(
        "host",
        "update",
        "compute-1",
        "--no-reserved",
        "--maintenance",
        "--segment",
        "az2",
        "--fence",
        "sim:host=compute-1,port=623",
        "--fence",
        "sim:host=pdu-7",
    )
    assert updated.fields()["reserved"] == "no"
    assert updated.fields()["maintenance"] == "yes"
    assert updated.fields()["segment"] == "az2"
    assert updated.fields()["fencing"] == "sim:host=compute-1,port=623; sim:host=pdu-7"
    cleared = cli.ok("--json", "host", "update", "compute-1", "--no-fence").json()
    assert cleared["fencing"] == []
    assert cleared["maintenance"] is True  # options not given are left alone

    assert cli.ok("host", "delete", "compute-1").out.strip() == "host compute-1 deleted"
    assert cli.ok("--json", "host", "list").json()[0]["name"] == "compute-2"
    assert len(cli.ok("--json", "host", "list").json()) == 1


def test_unknown_host_is_a_404_on_stderr(cli: Cli) -> None:
    for verb in ("show", "delete", "restore"):
        result = cli("host", verb, "compute-9")
        assert result.code == 1, verb
        assert result.out == ""
        assert result.err.startswith("error: 404: "), result.err
        assert "compute-9" in result.err
    missing_segment = cli("host", "create", "compute-1", "--segment", "nowhere")
    assert missing_segment.code == 1
    assert "nowhere" in missing_segment.err
    assert cli.ok("--json", "host", "list").json() == []


def test_fence_option_syntax() -> None:
    assert fence_method("sim") == {"driver": "sim", "options": {}}
    assert fence_method("sim:host=compute-1") == {
        "driver": "sim",
        "options": {"host": "compute-1"},
    }
    assert fence_method("sim:host=compute-1,uri=redfish://b/x?a=b") == {
        "driver": "sim",
        "options": {"host": "compute-1", "uri": "redfish://b/x?a=b"},
    }


@pytest.mark.parametrize("spec", ["sim:host", ":host=a", "sim:host=a,host=b", "sim:=x"])
def test_malformed_fence_is_a_usage_error(cli: Cli, spec: str) -> None:
    cli.ok("segment", "create", "az1")
    result = cli("host", "create", "compute-1", "--segment", "az1", "--fence", spec)
    assert result.code == 2
    assert "--fence" in result.err
    assert cli.ok("--json", "host", "list").json() == []


def test_update_without_changes_is_a_usage_error(cli: Cli) -> None:
    cli.ok("segment", "create", "az1")
    cli.ok("host", "create", "compute-1", "--segment", "az1")
    for argv in (
        ("segment", "update", "az1"),
        ("host", "update", "compute-1"),
        ("host", "update", "compute-1", "--fence", "sim", "--no-fence"),
    ):
        result = cli(*argv)
        assert result.code == 2, argv
        assert "usage: vigil" in result.err


def test_fence_password_never_appears_in_any_output(cli: Cli) -> None:
    fence = f"sim:host=compute-1,password={SECRET}"
    cli.ok("segment", "create", "az1")
    table = cli.ok("host", "create", "compute-1", "--segment", "az1", "--fence", fence)
    assert table.fields()["fencing"] == "sim:host=compute-1,password=***"
    as_json = cli.ok("--json", "host", "create", "compute-2", "--segment", "az1", "--fence", fence)
    assert as_json.json()["fencing"][0]["options"] == {"host": "compute-1", "password": "***"}
    cli.ok("host", "show", "compute-1")
    cli.ok("host", "show", "compute-1", "--json")
    cli.ok("host", "list")
    cli.ok("host", "list", "--json")
    cli.ok("host", "update", "compute-2", "--fence", f"sim:bmc_password={SECRET}")
    cli.ok("host", "update", "compute-2", "--json", "--fence", f"sim:password={SECRET}")
    # Refusals too: the server echoes rejected input in a 422, the CLI must not.
    refused = cli(
        "host", "create", "compute-3", "--segment", "az1", "--fence", f"ipmi:password={SECRET}"
    )
    assert refused.code == 1
    assert "address" in refused.err  # the missing option is named, the password is not
    unknown = cli(
        "host", "create", "compute-3", "--segment", "az1", "--fence", f"magic:password={SECRET}"
    )
    assert unknown.code == 1 and "fencing.0.driver" in unknown.err
    typo = cli(
        "host", "create", "compute-3", "--segment", "az1", "--fence", f"sim:host=compute-3,{SECRET}"
    )
    assert typo.code == 2

    assert cli.seen and not [s for s in cli.seen if SECRET in s]


# ----------------------------------------------------------------------- authentication


def test_wrong_or_missing_token_exits_1_with_a_clear_message(cli: Cli) -> None:
    for token in ("wr0ng-t0ken", None):
        result = cli("segment", "list", token=token)
        assert result.code == 1
        assert result.out == ""
        assert result.err.startswith("error: 401: missing or wrong bearer token")
        assert "--token" in result.err
    assert not [s for s in cli.seen if "wr0ng" in s]


def test_token_from_environment_or_file(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_URL", cli.url)
    monkeypatch.setenv("VIGIL_TOKEN", TOKEN)
    assert main(["segment", "list"]) == 0
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    monkeypatch.setenv("VIGIL_TOKEN", "stale")
    assert main(["--token-file", str(token_file), "segment", "list"]) == 0  # file wins
    monkeypatch.delenv("VIGIL_TOKEN")
    monkeypatch.setenv("VIGIL_TOKEN_FILE", str(token_file))
    assert main(["segment", "list"]) == 0
    assert main(["--token-file", str(tmp_path / "absent"), "segment", "list"]) == 2


def test_the_token_is_never_printed(cli: Cli) -> None:
    cli.ok("segment", "create", "az1")
    cli.ok("host", "create", "compute-1", "--segment", "az1")
    cli.ok("host", "list")
    cli.ok("--json", "status")
    cli("host", "show", "compute-9")
    cli("segment", "create", "az1", "--max-failed-share", "7")
    assert not [s for s in cli.seen if TOKEN in s]


def test_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The port is closed again: nothing listens there.
    code = main(["--url", f"http://127.0.0.1:{port}", "--token", TOKEN, "host", "list"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert captured.err.startswith(f"error: cannot reach vigil-server at http://127.0.0.1:{port}")
    assert len(captured.err.splitlines()) == 1
    assert TOKEN not in captured.err


def test_usage_errors_exit_2(cli: Cli) -> None:
    assert cli().code == 2
    assert cli("segment").code == 2
    assert cli("segment", "create", "az1", "--default-policy", "always").code == 2
    assert cli("failure", "show", "one").code == 2
    assert cli("host", "list", "--frobnicate").code == 2
    assert cli("--help").code == 0
    assert cli.ok("--json", "segment", "list").json() == []


# ---------------------------------------------------------------------------- instances


def test_instance_list_shows_effective_policies(world: World, cli: Cli) -> None:
    web = world.cloud.add_instance("web-1", "compute-1", policy=HaPolicy.KEEP_RUNNING)
    db = world.cloud.add_instance("db-1", "compute-1")
    app = world.cloud.add_instance("app-1", "compute-1", policy=HaPolicy.KEEP_RUNNING)
    world.cloud.add_instance("elsewhere", "compute-2", policy=HaPolicy.KEEP_RUNNING)
    cli.ok("segment", "create", "az1", "--default-policy", "notify")
    cli.ok("host", "create", "compute-1", "--segment", "az1")

    override = cli.ok("instance", "set-policy", app, "off", "--priority", "5")
    assert override.fields()["policy"] == "off"
    assert override.fields()["priority"] == "5"

    table = {r[1]: r for r in cli.ok("instance", "list", "--host", "compute-1").rows()}
    assert set(table) == {"web-1", "db-1", "app-1"}
    assert table["web-1"][4:] == ["keep-running", "0", "metadata"]
    assert table["db-1"][4:] == ["notify", "0", "segment"]
    assert table["app-1"][4:] == ["off", "5", "override"]
    assert table["web-1"][0] == web and table["web-1"][2] == "compute-1"

    docs = cli.ok("--json", "instance", "list", "--host", "compute-1").json()
    assert {d["id"]: d["policy_source"] for d in docs} == {
        web: "metadata",
        db: "segment",
        app: "override",
    }
    # Without --host: the operator's overrides.
    assert [r[0] for r in cli.ok("instance", "list").rows()] == [app]

    shown = cli.ok("instance", "show", db).fields()
    assert (shown["name"], shown["policy"], shown["policy source"]) == ("db-1", "notify", "segment")

    assert cli.ok("instance", "unset-policy", app).out.strip() == (
        f"instance {app}: policy override removed"
    )
    back = cli.ok("--json", "instance", "show", app).json()
    assert (back["policy"], back["policy_source"]) == ("keep-running", "metadata")
    assert cli.ok("--json", "instance", "list").json() == []

    bad = cli("instance", "set-policy", web, "notify", "--priority", "5000")
    assert bad.code == 1
    assert "priority" in bad.err
    unknown = cli("instance", "show", "no-such-instance")
    assert unknown.code == 1
    assert unknown.err.startswith("error: 404: ")


# -------------------------------------------------------------------- cloud-wide control


def test_pause_resume_and_status(cli: Cli) -> None:
    cli.ok("segment", "create", "az1")
    cli.ok("host", "create", "compute-1", "--segment", "az1")
    cli.ok("host", "create", "compute-2", "--segment", "az1", "--maintenance")

    status = cli.ok("status").out.splitlines()
    assert status[0] == "automatic recovery: active"
    # one server alone: it owns the new segment once its keeper has taken it
    assert status[1] == "coordination: local (this server alone), reachable"
    member = cli.ok("--json", "status").json()["servers"]["member"]
    out = wait_until(
        lambda: o if "az1 (epoch 1)" in (o := cli.ok("status").out) else None,
        "the segment taken",
        10,
    )
    status = out.splitlines()
    assert status[2] == f"servers: {member}; {member} answered, acting on az1 (epoch 1)"
    owner = next(line for line in status if line.startswith("az1 "))
    assert owner.split()[:3] == ["az1", member, "1"]
    hosts = next(line for line in status if line.startswith("hosts: "))
    assert hosts.startswith("hosts: 2 (2 new, 0 up, 0 suspect, 0 failed, 0 recovered;")
    assert "1 in maintenance" in hosts
    assert status[-1] == "active recoveries: none"

    paused = cli.ok("pause", "--reason", "nova upgrade")
    assert paused.fields()["paused"] == "yes"
    assert paused.fields()["reason"] == "nova upgrade"
    line = cli.ok("status").out.splitlines()[0]
    assert line.startswith("automatic recovery: PAUSED since ")
    assert line.endswith(": nova upgrade")
    doc = cli.ok("status", "--json").json()
    assert doc["control"]["paused"] is True
    assert doc["hosts"]["new"] == 2
    assert doc["active_recoveries"] == []

    assert cli("pause", "--reason", "").code == 1  # the API wants a reason
    assert cli("pause").code == 2
    resumed = cli.ok("--json", "resume").json()
    assert resumed["paused"] is False and resumed["reason"] == ""
    assert cli.ok("status").out.splitlines()[0] == "automatic recovery: active"


def test_a_recovery_seen_through_the_cli(world: World, cli: Cli) -> None:
    """A host loses power; the operator follows the failure and recovery, then restores it."""
    vm = world.cloud.add_instance("web-1", "compute-1", policy=HaPolicy.KEEP_RUNNING)
    cli.ok("segment", "create", "az1")
    for name in world.cloud.hosts():
        cli.ok("host", "create", name, "--segment", "az1", "--fence", f"sim:host={name}")
    settings = world.server.settings
    agents = SimAgents(
        world.cloud,
        server=world.server.heartbeat_address,
        key=settings.agent_key.encode(),
        interval=settings.detection.heartbeat_interval,
    )
    agents.start()
    try:
        with world.api() as api:
            wait_until(
                lambda: all(h["state"] == "up" for h in api.get("/v1/hosts").json()),
                "every host up",
                20.0,
            )
            assert cli("host", "restore", "compute-2").code == 1  # up: nothing to restore
            world.cloud.power_loss("compute-1")
            recovery = wait_until(
                lambda: next(
                    (r for r in api.get("/v1/recoveries").json() if r["status"] == "succeeded"),
                    None,
                ),
                "the recovery to finish",
                20.0,
            )
    finally:
        agents.stop()

    failures = cli.ok("failure", "list", "--host", "compute-1").rows()
    assert len(failures) == 1
    assert failures[0][1:3] == ["compute-1", "host-down"]
    failure = cli.ok("--json", "failure", "show", str(recovery["failure_id"])).json()
    assert failure["host"] == "compute-1"

    rows = cli.ok("recovery", "list", "--status", "succeeded").rows()
    assert [(r[0], r[1], r[3]) for r in rows] == [(str(recovery["id"]), "compute-1", "succeeded")]
    assert cli.ok("--json", "recovery", "list", "--status", "failed").json() == []

    shown = cli.ok("recovery", "show", str(recovery["id"]))
    summary, steps = shown.out.split("\n\n")
    fields = table_fields(summary)
    assert (fields["id"], fields["host"], fields["status"]) == (
        str(recovery["id"]),
        "compute-1",
        "succeeded",
    )
    assert fields["duration"].endswith("s")
    step_lines = steps.splitlines()
    assert step_lines[0].split() == [
        "SEQ",
        "KIND",
        "INSTANCE",
        "STATUS",
        "ATTEMPTS",
        "DURATION",
        "DETAIL",
    ]
    kinds = [line.split()[1] for line in step_lines[2:]]
    assert kinds[:4] == ["record-instances", "fence", "force-down", "list-instances"]
    evacuate = next(line for line in step_lines[2:] if line.split()[1] == "evacuate")
    assert f"web-1 ({vm})" in evacuate
    assert "succeeded" in evacuate
    at = step_lines[0].index("DURATION")
    durations = [line[at:].split()[0] for line in step_lines[2:]]
    assert all(d.endswith("s") for d in durations), shown.out
    assert cli.ok("recovery", "show", str(recovery["id"]), "--json").json() == recovery

    doc = cli.ok("--json", "status").json()
    assert doc["hosts"]["recovered"] == 1
    assert cli.ok("status").out.splitlines()[-1] == "active recoveries: none"

    world.cloud.power_restore("compute-1")
    restored = cli.ok("host", "restore", "compute-1")
    assert restored.fields()["state"] == "new"
    assert restored.fields()["state reason"] == "restored by operator"


# -------------------------------------------------------------------------------- output


def test_table_values_for_people() -> None:
    assert output.duration(1.234) == "1.23s"
    assert output.duration(125) == "2m05s"
    assert output.duration(7300) == "2h01m"
    assert output.duration(None) == "-"
    assert output.text(True) == "yes" and output.text(False) == "no"
    assert output.text(None) == "-" and output.text("") == "-"
    assert output.text(["heartbeat", "bmc"]) == "heartbeat, bmc"
    stamp = output.timestamp(1_800_000_000.4)
    assert stamp.startswith("2027-01-1")  # local time: 15 January, give or take the zone
    assert "." not in stamp and ("+" in stamp or "-" in stamp[10:])
    assert output.timestamp(0) == "-"
    assert output.table(["A", "LONGER"], [["xyz", "1"]]) == "A    LONGER\n---  ------\nxyz  1"


# ------------------------------------------------------------------ custom recovery


def test_subscriptions_events_and_consumer_actions(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = world.cli
    secret_file = tmp_path / "secret"
    secret_file.write_text("a-webhook-secret-of-some-length\n")
    made = cli.ok(
        "subscription",
        "create",
        "noc",
        "--target-url",
        "https://noc.example/hook",
        "--secret-file",
        str(secret_file),
        "--event-type",
        "vigil.recovery.*",
    )
    assert "vigil.recovery.*" in made.out and "noc.example" in made.out
    listed = cli.ok("--json", "subscription", "list").json()
    assert [s["name"] for s in listed] == ["noc"]
    assert all("a-webhook-secret" not in seen for seen in cli.seen)  # never shown back
    bad = cli(
        "subscription",
        "create",
        "x",
        "--target-url",
        "ftp://nope",
        "--secret-file",
        str(secret_file),
    )
    assert bad.code == 1 and "url" in bad.err
    bad = cli(
        "subscription",
        "create",
        "y",
        "--target-url",
        "https://ok.example",
        "--secret-file",
        str(secret_file),
        "--event-type",
        "vigil.nothing.like.this",
    )
    assert bad.code == 1 and "event_types" in bad.err
    monkeypatch.delenv("VIGIL_WEBHOOK_SECRET", raising=False)
    assert cli("subscription", "create", "z", "--target-url", "https://ok.example").code == 2
    cli.ok("subscription", "delete", "noc")
    assert cli.ok("--json", "subscription", "list").json() == []

    # consumer actions: an instance of a healthy host cannot be evacuated
    cli.ok("segment", "create", "s")
    cli.ok("host", "create", "compute-2", "--segment", "s", "--fence", "sim")
    iid = world.cloud.add_instance("db", "compute-2")
    refused = cli("instance", "evacuate", iid)
    assert refused.code == 1 and "409" in refused.err
    cli.ok("instance", "restart", iid)
    assert world.cloud.calls("reboot", iid) == 1
    events = cli.ok("--json", "event", "list").json()
    assert [e["event_type"] for e in events] == ["vigil.consumer.action"]
    assert "vigil.consumer.action" in cli.ok("event", "list").out


def test_guest_failures_and_host_services_seen_and_handled(world: World, cli: Cli) -> None:
    cli.ok("segment", "create", "rack-a")
    cli.ok("host", "create", "compute-1", "--segment", "rack-a")
    assert cli("host", "services", "compute-1").code == 1  # no agent report yet
    key = host_key(AGENT_KEY, "compute-1").encode()
    now = time.time()
    report = GuestReport(
        str(uuid.uuid4()), "compute-1", "inst-1", GuestFailureKind.WATCHDOG, now, {"action": "none"}
    )
    snapshot = {
        "nova-compute": ServiceState(False, now - 1, "no process matches 'nova-compute'"),
        "libvirtd": ServiceState(True, now - 100, "pid 812"),
    }
    with httpx.Client(base_url=world.server.api_url) as http:
        for route, body in (
            ("reports", encode_reports("compute-1", [report])),
            ("services", encode_services("compute-1", now, snapshot)),
        ):
            answer = http.post(
                f"/v1/agents/compute-1/{route}",
                content=body,
                headers={SIGNATURE_HEADER: sign(body, key)},
            )
            assert answer.status_code == 200, answer.text

    [row] = cli.ok("guest-failure", "list").rows()
    assert row[1:5] == ["inst-1", "compute-1", "watchdog", "open"]
    failure_id = row[0]
    shown = cli.ok("guest-failure", "show", failure_id).fields()
    assert shown["reason"] == "guest watchdog fired: none"
    done = cli.ok("guest-failure", "handled", failure_id, "--reason", "owner fixed the app")
    assert done.fields()["status"] == "resolved"
    assert cli.ok("guest-failure", "list", "--status", "open").out.count("\n") <= 2
    assert cli("guest-failure", "show", "999").code == 1

    services = cli.ok("host", "services", "compute-1").out
    rows = table_rows(services.split("\n\n")[0])
    assert [r[:2] for r in rows] == [["libvirtd", "yes"], ["nova-compute", "no"]]
    assert "compute service: not held by vigil" in services
    assert cli.ok("--json", "host", "services", "compute-1").json()["services_down"] == [
        "nova-compute"
    ]


def test_application_failures_seen_credentialed_and_closed(world: World, cli: Cli) -> None:
    """vigil-server's wiring of issue 17: an agent's signed report of a failing check, the
    ladder on the server's loop (no restart command, reboots=1: a soft reboot through
    Nova, then escalated), the application's heartbeat with the credential the CLI
    shows, and the operator closing the failure."""
    cli.ok("segment", "create", "rack-a")
    cli.ok("host", "create", "compute-1", "--segment", "rack-a")
    checks = {
        "vigil:check:web": "type=http port=8080 interval=5 timeout=2",
        "vigil:check:app": "type=heartbeat interval=30",
        "vigil:app_recovery": "reboots=1 settle=5 backoff=0",
    }
    iid = world.cloud.add_instance("web-1", "compute-1", metadata=checks)
    key = host_key(AGENT_KEY, "compute-1").encode()

    def agent_reports(health: str) -> dict[str, Any]:
        now = time.time()
        state = {"health": health, "failures": 3, "last_run_at": now, "detail": "HTTP 503"}
        body = json.dumps(
            {"host": "compute-1", "at": now, "instances": {iid: {"web": {**state, "since": now}}}}
        ).encode()
        with httpx.Client(base_url=world.server.api_url) as http:
            answer = http.post(
                "/v1/agents/compute-1/app",
                content=body,
                headers={SIGNATURE_HEADER: sign(body, key)},
            )
        assert answer.status_code == 200, answer.text
        assert answer.headers[SIGNATURE_HEADER] == sign(answer.content, key)
        result: dict[str, Any] = answer.json()
        return result

    assert [c["name"] for c in agent_reports("healthy")["plan"][iid]] == ["web"]
    agent_reports("failing")
    wait_until(lambda: world.cloud.calls("reboot", iid) == 1, "the soft reboot", 10)
    [row] = wait_until(
        lambda: (
            (rows := cli.ok("app", "list", "--failing").rows())
            and rows[0][4] == "escalated"
            and rows
        ),
        "escalated",
        20,
    )
    assert row[:3] == [iid, "compute-1", "keep-running"]
    assert cli.ok("app", "show", iid).fields()["LAST ACTION".lower()] == "soft-reboot"
    credential = cli.ok("--json", "app", "credential", iid).json()["credential"]
    with httpx.Client(base_url=world.server.api_url) as http:
        url = f"/v1/instances/{iid}/app/heartbeat"
        assert http.post(url, headers={"X-Vigil-App-Credential": "x" * 64}).status_code == 401
        assert http.post(url, headers={"X-Vigil-App-Credential": credential}).status_code == 200
    closed = cli.ok("app", "close", iid, "--reason", "owner fixed it", "--by", "owner")
    assert closed.fields()["failure"] == "closed"
    assert cli("app", "show", "no-such-instance").code == 1
    events = [e["event_type"] for e in cli.ok("--json", "event", "list").json()]
    assert {"vigil.app.failure", "vigil.app.escalated", "vigil.app.closed"} <= set(events)
