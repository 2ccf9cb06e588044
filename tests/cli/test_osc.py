"""``openstack vigil ...`` (vigil.osc) against a real vigil-server started in-process.

The commands run through OpenStackClient's own shell (``OpenStackShell().run``) with a
static token (``--os-endpoint URL --os-token TOKEN``: keystoneauth's ``admin_token``), as
the installed entry points make them; every command of the ``vigil`` CLI must have one.
"""

from __future__ import annotations

import importlib.metadata
import logging
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cliff.lister import Lister
from cliff.show import ShowOne
from openstackclient import shell
from osc_lib import clientmanager
from support.cli import InProcess, Result
from support.served import TOKEN, serving

from vigil.cli import main as cli
from vigil.osc import plugin, v1

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
GROUP = "openstack.vigil.v1"


class Osc(InProcess):
    """Runs ``openstack --os-endpoint URL --os-token TOKEN ARGS`` in this process."""

    def __call__(self, *args: str, endpoint: str | None = None) -> Result:
        argv = ["--os-endpoint", endpoint or self.url, "--os-token", TOKEN, *args]
        return self.run(lambda: openstack(argv))


def openstack(argv: list[str]) -> int:
    """``openstack ARGV``'s exit status, as the installed command would exit."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return shell.OpenStackShell().run(argv)
    except SystemExit as exc:  # argparse: a usage error (as `openstack` exits)
        return int(exc.code or 0)
    finally:  # each shell configures the root logger anew, and keeps its client
        root.handlers[:], root.level = handlers, level
        cache = vars(clientmanager.ClientManager)[plugin.API_NAME]
        if cache._handle is not None:
            cache._handle.close()
            cache._handle = None


@pytest.fixture
def osc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Osc]:
    with serving(tmp_path, hosts=("compute-1", "compute-2")) as (server, _cloud):
        yield Osc(server.api_url, capsys)


def ok(result: Result) -> Result:
    assert result.code == 0, result.err
    return result


# ------------------------------------------------------------------------ entry points


def test_every_vigil_command_is_an_openstack_vigil_command() -> None:
    """Each command of ``vigil`` (but the few that are not API calls) has an entry point
    ``vigil_NOUN_VERB`` naming its class, with the same options; lists are Listers,
    single records ShowOnes, deletions print nothing. The installed entry points are
    pyproject's (else: ``pip install -e .`` again)."""
    commands = cli.commands()
    assert set(v1.NOT_IN_OSC) <= set(commands)
    wanted = {"vigil_" + "_".join(w): w for w in commands if w not in v1.NOT_IN_OSC}
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"][GROUP]
    assert set(declared) == set(wanted)
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=GROUP)}
    assert installed == declared, "stale installed entry points: pip install -e . again"

    for name, words in wanted.items():
        cls = importlib.metadata.EntryPoint(name, declared[name], GROUP).load()
        assert cls.words == words, name
        verb = words[-1]
        if verb in ("list", "dead-letters", "verify"):
            assert issubclass(cls, Lister), name
        elif verb in ("delete", "unset-policy", "user-data", "stack-parameters"):
            assert not issubclass(cls, Lister | ShowOne), name
        else:
            assert issubclass(cls, ShowOne), name
        parser = cls(None, None).get_parser("openstack vigil " + " ".join(words))
        theirs = {(a.dest, *a.option_strings) for a in commands[words]._actions}
        ours = {(a.dest, *a.option_strings) for a in parser._actions}
        # Every argument but --json, none cut short as a conflict with cliff's options.
        assert theirs - {("json", "--json")} <= ours, name
        assert commands[words].description == parser.description, name


# ---------------------------------------------------------------------------- commands


def test_segment_and_host_create_show_list_delete(osc: Osc) -> None:
    created = ok(
        osc("vigil", "segment", "create", "az1", "--default-policy", "notify", "-f", "json")
    )
    # A record: the API's field names and raw values.
    assert created.json() == {
        "name": "az1",
        "default_policy": "notify",
        "max_failed_share": 0.5,
        "max_parallel_evacuations": 8,
        "paused": False,
        "pause_reason": "",
        "description": "",
    }
    listed = ok(osc("vigil", "segment", "list", "-f", "json")).json()
    assert [(s["Name"], s["Default Policy"], s["Paused"]) for s in listed] == [
        ("az1", "notify", False)
    ]
    shown = osc("vigil", "segment", "show", "az1", "-f", "value", "-c", "default_policy")
    assert ok(shown).out == "notify\n"

    # --fence is parsed as `vigil` parses it; the API masks the password.
    fence = "sim:host=compute-1,password=hunter2"
    create = ["vigil", "host", "create", "compute-1", "--segment", "az1", "--fence", fence]
    host = ok(osc(*create, "-f", "json")).json()
    assert host["fencing"] == [
        {"driver": "sim", "options": {"host": "compute-1", "password": "***"}}
    ]
    table = ok(osc("vigil", "host", "show", "compute-1")).out
    assert "| fencing          | sim:host=compute-1,password=*** |" in table
    assert "hunter2" not in table
    assert ok(osc("vigil", "host", "list", "-f", "value", "-c", "Name")).out == "compute-1\n"

    deleted = ok(osc("vigil", "host", "delete", "compute-1"))
    assert deleted.out == ""
    assert ok(osc("vigil", "host", "list", "-f", "json")).json() == []


def test_pause_and_resume_and_status(osc: Osc) -> None:
    paused = ok(osc("vigil", "pause", "--reason", "maintenance window", "-f", "json")).json()
    assert (paused["paused"], paused["reason"]) == (True, "maintenance window")
    status = ok(osc("vigil", "status", "-f", "json")).json()
    assert status["control"]["paused"] is True
    assert status["hosts"]["new"] == 0
    table = ok(osc("vigil", "status")).out
    assert "| control" in table and "reason: maintenance window" in table
    assert ok(osc("vigil", "resume", "-f", "value", "-c", "paused")).out == "False\n"


def test_errors_are_the_servers_words_and_exit_non_zero(osc: Osc) -> None:
    missing = osc("vigil", "host", "show", "nope")
    assert missing.code == 1
    assert missing.out == ""
    assert "404: host 'nope' does not exist" in missing.err
    # vigil's own checks, before any request.
    usage = osc("vigil", "host", "create", "c9", "--segment", "az1", "--fence", "sim:x")
    assert usage.code == 2
    assert "argument --fence: fence sim: option 1 is not key=value" in usage.err
    nothing = osc("vigil", "segment", "update", "az1")
    assert nothing.code == 1
    assert "nothing to change: give at least one option" in nothing.err


def test_os_vigil_url_wins_over_the_endpoint(osc: Osc) -> None:
    nowhere = "http://127.0.0.1:9"
    unreachable = osc("vigil", "segment", "list", endpoint=nowhere)
    assert unreachable.code == 1
    assert f"cannot reach vigil-server at {nowhere}" in unreachable.err
    listed = osc(
        "--os-vigil-url", osc.url, "vigil", "segment", "list", "-f", "json", endpoint=nowhere
    )
    assert ok(listed).json() == []


def test_the_ca_bundle_of_osc_is_the_clients(osc: Osc) -> None:
    answer = osc("--os-cacert", "/nonexistent/ca.pem", "vigil", "segment", "list")
    assert answer.code == 1
    assert "cannot read the CA bundle /nonexistent/ca.pem" in answer.err
