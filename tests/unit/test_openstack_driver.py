"""The openstack compute driver without a Nova: error translation at the boundary, the
policy precedence (server metadata > image properties > flavor extra specs), the pinned
microversion, pagination and host discovery, on a small fake of the SDK's adapters.

What Nova itself does is tested against a real one in tests/nova.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from keystoneauth1 import exceptions as ksa_exc

from vigil.drivers import openstack as driver_module
from vigil.drivers.compute import MASAKARI_KEY, POLICY_KEY, PRIORITY_KEY, WATCHDOG_ACTION_KEY
from vigil.drivers.errors import Conflict, NotFound, PermanentError, TemporaryError
from vigil.drivers.openstack import OpenStackCompute, discover_hosts, resolve_policy
from vigil.model import HaPolicy

PASSWORD = "s3cret-Passw0rd"


class Response:
    def __init__(self, status: int, body: Any = None) -> None:
        self.status_code = status
        self._body = body
        self.content = b"" if body is None else json.dumps(body).encode()
        self.text = self.content.decode()

    def json(self) -> Any:
        if self._body is None:
            raise ValueError("no body")
        return self._body


Handler = Callable[[str, str, dict[str, list[str]], Any], Response]


class Adapter:
    """The part of an SDK proxy the driver uses: request() and get()."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[tuple[str, str, Any, str | None]] = []

    def request(
        self, path: str, method: str, json: Any = None, microversion: str | None = None
    ) -> Response:
        self.calls.append((method, path, json, microversion))
        parts = urlsplit(path)
        return self.handler(method, parts.path, parse_qs(parts.query), json)

    def get(self, path: str, microversion: str | None = None) -> Response:
        return self.request(path, "GET", microversion=microversion)


def server_body(sid: str, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": sid,
        "name": f"vm-{sid}",
        "status": "ACTIVE",
        "OS-EXT-SRV-ATTR:host": "compute1",
        "OS-EXT-STS:task_state": None,
        "metadata": {},
        "image": {"id": "img-1"},
        "flavor": {"original_name": "m1", "extra_specs": {}},
        "server_groups": [],
    }
    body.update(over)
    return body


class FakeNova:
    """A few of Nova's and Glance's answers; ``fail`` makes the next calls raise/answer."""

    def __init__(self, top_version: str = "2.104") -> None:
        self.top_version = top_version
        self.services = [
            {"id": f"svc-{h}", "host": h, "state": "up", "status": "enabled", "forced_down": False}
            for h in ("compute1", "compute2", "compute3")
        ]
        self.servers: dict[str, dict[str, Any]] = {}
        self.changed: set[str] = set()  # what a changes-since listing returns
        self.listings: list[str] = []  # the changes-since of each such listing
        self.reads: list[str] = []  # servers read one by one
        self.images: dict[str, dict[str, Any]] = {"img-1": {"id": "img-1"}}
        self.image_status = 200
        self.answer: Response | Exception | None = None  # forced answer of compute calls
        self.compute = Adapter(self._compute)
        self.image = Adapter(self._image)
        self.config = SimpleNamespace(config={"auth": {"username": "admin", "password": PASSWORD}})

    def _compute(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Response:
        if path == "/":
            return Response(200, {"version": {"version": self.top_version, "min_version": "2.1"}})
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer is not None:
            return self.answer
        if path == "/os-services":
            host = query.get("host", [None])[0]
            return Response(
                200, {"services": [s for s in self.services if host in (None, s["host"])]}
            )
        if path == "/servers/detail" and "changes-since" in query:
            self.listings.append(query["changes-since"][0])
            return Response(200, {"servers": [self.servers[k] for k in sorted(self.changed)]})
        if path == "/servers/detail":
            host = query["host"][0]
            listed = sorted(
                (s for s in self.servers.values() if s["OS-EXT-SRV-ATTR:host"] == host),
                key=lambda s: str(s["id"]),
            )
            marker = query.get("marker", [None])[0]
            if marker:
                listed = [s for s in listed if s["id"] > marker]
            return Response(200, {"servers": listed[: int(query["limit"][0])]})
        if path.startswith("/servers/"):
            sid = path.split("/")[2]
            if sid not in self.servers:
                return Response(404, {"itemNotFound": {"code": 404, "message": "not found"}})
            if path.endswith("/action"):
                return Response(202)
            self.reads.append(sid)
            return Response(200, {"server": self.servers[sid]})
        if path.startswith("/os-services/") and method == "PUT":
            return Response(200, {"service": {}})
        if path == "/os-aggregates":
            return Response(
                200, {"aggregates": [{"id": 1, "name": "rack-a", "hosts": ["compute1", "x"]}]}
            )
        if path == "/os-availability-zone/detail":
            zones = [
                {
                    "zoneName": "az1",
                    "hosts": {
                        "compute2": {"nova-compute": {}},
                        "controller": {"nova-scheduler": {}},
                    },
                }
            ]
            return Response(200, {"availabilityZoneInfo": zones})
        return Response(404, {"itemNotFound": {"message": f"no fake for {path}"}})

    def _image(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Response:
        image_id = path.rsplit("/", 1)[1]
        if self.image_status != 200:
            return Response(self.image_status, {"message": "glance trouble"})
        if image_id not in self.images:
            return Response(404, {"message": "no such image"})
        return Response(200, self.images[image_id])


@pytest.fixture
def nova() -> FakeNova:
    return FakeNova()


@pytest.fixture
def compute(nova: FakeNova) -> OpenStackCompute:
    return OpenStackCompute(nova)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ policy


@pytest.mark.parametrize(
    ("metadata", "image", "flavor", "expected"),
    [
        ({}, {}, {}, (None, 0)),
        ({POLICY_KEY: "keep-running"}, {POLICY_KEY: "notify"}, {POLICY_KEY: "off"}, "keep"),
        ({}, {POLICY_KEY: "notify"}, {POLICY_KEY: "keep-running"}, (HaPolicy.NOTIFY, 0)),
        ({}, {}, {POLICY_KEY: "keep-running", PRIORITY_KEY: "4"}, (HaPolicy.KEEP_RUNNING, 4)),
        # Masakari's key in the image beats vigil's key in the flavor: sources, not keys,
        # are ordered.
        ({}, {MASAKARI_KEY: "True"}, {POLICY_KEY: "off"}, (HaPolicy.KEEP_RUNNING, 0)),
        # Policy and priority are taken separately, each from the first source setting it.
        ({POLICY_KEY: "keep-running"}, {}, {PRIORITY_KEY: "3"}, (HaPolicy.KEEP_RUNNING, 3)),
        ({PRIORITY_KEY: "9"}, {PRIORITY_KEY: "2"}, {POLICY_KEY: "notify"}, (HaPolicy.NOTIFY, 9)),
        # Unreadable values count as unset and fall through.
        (
            {POLICY_KEY: "bogus", PRIORITY_KEY: "x"},
            {POLICY_KEY: "notify", PRIORITY_KEY: "5"},
            {},
            (HaPolicy.NOTIFY, 5),
        ),
    ],
)
def test_policy_precedence(
    metadata: dict[str, str], image: dict[str, Any], flavor: dict[str, Any], expected: Any
) -> None:
    if expected == "keep":
        expected = (HaPolicy.KEEP_RUNNING, 0)
    assert resolve_policy(metadata, image, flavor) == expected


def test_server_reads_fault_group_and_falls_back_to_image_then_flavor(
    nova: FakeNova, compute: OpenStackCompute
) -> None:
    nova.images["img-1"] = {"id": "img-1", POLICY_KEY: "notify", PRIORITY_KEY: 2}
    nova.servers["a"] = server_body(
        "a",
        status="ERROR",
        fault={"code": 500, "message": "Anti-affinity instance group policy was violated."},
        server_groups=["grp-1"],
        flavor={"extra_specs": {POLICY_KEY: "keep-running", PRIORITY_KEY: "8"}},
    )
    server = compute.get_server("a")
    assert (server.policy, server.priority) == (HaPolicy.NOTIFY, 2)
    assert server.fault == "Anti-affinity instance group policy was violated."
    assert server.server_group == "grp-1"
    assert server.status == "ERROR" and server.host == "compute1"
    compute.get_server("a")
    assert len(nova.image.calls) == 1, "image properties are cached"

    nova.servers["b"] = server_body(
        "b", image={"id": "deleted"}, flavor={"extra_specs": {POLICY_KEY: "keep-running"}}
    )
    assert compute.get_server("b").policy == HaPolicy.KEEP_RUNNING, "a deleted image says nothing"
    nova.servers["c"] = server_body("c", image="", metadata={MASAKARI_KEY: "False"})
    assert compute.get_server("c").policy == HaPolicy.OFF  # volume-backed: no image to read
    nova.servers["d"] = server_body(
        "d", metadata={POLICY_KEY: "off", PRIORITY_KEY: "1", WATCHDOG_ACTION_KEY: "none"}
    )
    before = len(nova.image.calls)
    compute.get_server("d")
    assert len(nova.image.calls) == before, "metadata that says everything needs no image"


def test_watchdog_action_from_metadata_then_image_then_flavor(
    nova: FakeNova, compute: OpenStackCompute
) -> None:
    nova.images["img-1"] = {"id": "img-1", WATCHDOG_ACTION_KEY: "Notify"}
    flavor = {"extra_specs": {WATCHDOG_ACTION_KEY: "none"}}
    nova.servers["a"] = server_body("a", flavor=flavor)
    assert compute.get_server("a").watchdog_action == "notify"  # the image's author
    nova.servers["b"] = server_body("b", flavor=flavor, metadata={WATCHDOG_ACTION_KEY: "none"})
    assert compute.get_server("b").watchdog_action == "none"  # the owner's own choice
    nova.images["plain"] = {"id": "plain"}
    nova.servers["c"] = server_body("c", image={"id": "plain"}, flavor=flavor)
    assert compute.get_server("c").watchdog_action == "none"  # the operator's flavor
    nova.servers["d"] = server_body("d", image={"id": "plain"})
    assert compute.get_server("d").watchdog_action is None


def test_confirmation_polls_share_one_listing_of_the_servers_changed_lately(
    nova: FakeNova,
) -> None:
    now = [100.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    compute = OpenStackCompute(
        nova,  # type: ignore[arg-type]
        clock=lambda: now[0],
        wall=lambda: 1_800_000_000.0 + now[0],
        poll_refresh=0.5,
        sleep=sleep,
    )

    def stamp(at: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_800_000_000.0 + at - 5.0))

    for sid in ("a", "b", "c"):
        nova.servers[sid] = server_body(sid, **{"OS-EXT-STS:task_state": "rebuilding"})
    nova.changed = {"a", "b", "c"}  # just evacuated
    # First sight: no read of its own; each joins the next listing, which reaches back
    # before it was first asked for (whole seconds in Nova, clocks a little apart).
    assert [compute.poll_server(s).task_state for s in "abc"] == ["rebuilding"] * 3
    assert nova.reads == []
    # One after the other here, each waits for the next listing (threads share one).
    assert nova.listings == [stamp(100.0), stamp(100.0), stamp(100.5)]
    assert now[0] == 101.0
    # Nova finishes "a" on compute2; "b" and "c" do not change.
    nova.servers["a"] = server_body("a", **{"OS-EXT-SRV-ATTR:host": "compute2"})
    nova.changed = {"a"}
    now[0] += 0.6
    polled = {s: compute.poll_server(s) for s in "abc"}
    assert polled["a"].host == "compute2" and polled["a"].task_state is None
    assert polled["b"].task_state == "rebuilding"  # unchanged: as last seen
    assert len(nova.listings) == 4 and nova.reads == []  # one call for three
    assert nova.listings[-1] == stamp(101.0)  # from the previous listing's start
    assert compute.poll_server("a").host == "compute2"  # within poll_refresh: no call
    assert len(nova.listings) == 4
    # A server the listing meant to hold does not show: read on its own.
    nova.servers["d"] = server_body("d")
    assert compute.poll_server("d").id == "d"
    assert nova.reads == ["d"] and len(nova.listings) == 5
    # get_server, which decisions use, is never served from the listing.
    compute.get_server("b")
    assert nova.reads[-1] == "b"


def test_glance_outage_uses_a_stale_answer_or_is_temporary(nova: FakeNova) -> None:
    now = [0.0]
    compute = OpenStackCompute(nova, image_cache_ttl=10, clock=lambda: now[0])  # type: ignore[arg-type]
    nova.images["img-1"] = {"id": "img-1", POLICY_KEY: "keep-running"}
    nova.servers["a"] = server_body("a")
    assert compute.get_server("a").policy == HaPolicy.KEEP_RUNNING
    nova.image_status = 503
    now[0] = 60.0
    assert compute.get_server("a").policy == HaPolicy.KEEP_RUNNING, "stale beats nothing"
    nova.servers["b"] = server_body("b", image={"id": "img-2"})
    with pytest.raises(TemporaryError):
        compute.get_server("b")


# ------------------------------------------------------------------- translation


@pytest.mark.parametrize(
    ("status", "message", "error"),
    [
        (400, "Compute service of compute1 is still in use.", Conflict),
        (
            400,
            "Unable to force up host compute1 as `done` evacuation migration records remain "
            "associated with the host.",
            Conflict,
        ),
        (409, "Cannot 'os-start' instance while it is in vm_state active", Conflict),
        (404, "Instance x could not be found.", NotFound),
        (400, "The target host can't be the same one.", PermanentError),
        (403, "Policy doesn't allow os_compute_api:servers:evacuate", PermanentError),
        (401, "The request you have made requires authentication.", PermanentError),
        (500, "Unexpected API Error.", TemporaryError),
        (503, "Service Unavailable", TemporaryError),
        (429, "Too many requests", TemporaryError),
    ],
)
def test_nova_answers_become_vigil_errors(
    nova: FakeNova,
    compute: OpenStackCompute,
    status: int,
    message: str,
    error: type[Exception],
) -> None:
    nova.servers["a"] = server_body("a")
    compute.get_server("a")  # negotiate the microversion first
    nova.answer = Response(status, {"someFault": {"code": status, "message": message}})
    with pytest.raises(error) as caught:
        compute.start("a")
    if error is PermanentError:
        assert not isinstance(caught.value, TemporaryError | NotFound)
    text = str(caught.value)
    assert "/servers/a/action" in text
    if status not in (401,):
        assert message in text
    if status == 403:
        assert "admin role" in text


@pytest.mark.parametrize(
    ("exc", "error", "words"),
    [
        (ksa_exc.ConnectFailure(f"refused, password={PASSWORD}"), TemporaryError, "unreachable"),
        (ksa_exc.ConnectTimeout("read timed out"), TemporaryError, "unreachable"),
        (ksa_exc.Unauthorized(f"wrong password {PASSWORD}"), PermanentError, "credentials"),
        (ksa_exc.EndpointNotFound("no compute"), PermanentError, "catalog"),
    ],
)
def test_library_errors_become_vigil_errors_without_secrets(
    nova: FakeNova, compute: OpenStackCompute, exc: Exception, error: type[Exception], words: str
) -> None:
    nova.answer = exc
    with pytest.raises(error) as caught:
        compute.list_services()
    assert words in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_nova_message_with_a_secret_is_scrubbed(nova: FakeNova, compute: OpenStackCompute) -> None:
    nova.answer = Response(500, {"computeFault": {"message": f"db url mysql://u:{PASSWORD}@db"}})
    with pytest.raises(TemporaryError) as caught:
        compute.list_services()
    assert PASSWORD not in str(caught.value) and "***" in str(caught.value)


# ------------------------------------------------------------------ microversion


@pytest.mark.parametrize(("top", "used"), [("2.104", "2.94"), ("2.94", "2.94"), ("2.60", "2.60")])
def test_microversion_is_pinned_below_2_95(top: str, used: str) -> None:
    nova = FakeNova(top)
    compute = OpenStackCompute(nova)  # type: ignore[arg-type]
    nova.servers["a"] = server_body("a")
    compute.evacuate("a", "compute2")
    method, path, body, microversion = nova.compute.calls[-1]
    assert (method, path, body, microversion) == (
        "POST",
        "/servers/a/action",
        {"evacuate": {"host": "compute2"}},
        used,
    )


def test_too_old_a_nova_is_refused_with_a_reason() -> None:
    compute = OpenStackCompute(FakeNova("2.40"))  # type: ignore[arg-type]
    with pytest.raises(PermanentError, match=r"2\.53"):
        compute.check()


# ----------------------------------------------------------------------- servers


def test_list_servers_pages_and_refuses_unknown_hosts(
    nova: FakeNova, compute: OpenStackCompute, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driver_module, "_PAGE", 2)
    for sid in ("a", "b", "c"):
        nova.servers[sid] = server_body(sid)
    nova.servers["z"] = server_body("z", **{"OS-EXT-SRV-ATTR:host": "compute2"})
    assert [s.id for s in compute.list_servers("compute1")] == ["a", "b", "c"]
    with pytest.raises(NotFound, match="no-such-host"):
        compute.list_servers("no-such-host")


def test_services_and_their_updates(nova: FakeNova, compute: OpenStackCompute) -> None:
    nova.services[0].update(state="down", forced_down=True, status="disabled")
    nova.services[0]["disabled_reason"] = "vigil: fenced"
    service = compute.get_service("compute1")
    assert (service.up, service.forced_down, service.disabled) == (False, True, True)
    assert service.disabled_reason == "vigil: fenced"
    compute.set_forced_down("compute2", True)
    compute.disable("compute2", "r" * 300)
    compute.enable("compute2")
    puts = [(c[1], c[2], c[3]) for c in nova.compute.calls if c[0] == "PUT"]
    assert puts == [
        ("/os-services/svc-compute2", {"forced_down": True}, "2.94"),
        ("/os-services/svc-compute2", {"status": "disabled", "disabled_reason": "r" * 255}, "2.94"),
        ("/os-services/svc-compute2", {"status": "enabled"}, "2.94"),
    ]


def test_discover_hosts(nova: FakeNova, compute: OpenStackCompute) -> None:
    assert discover_hosts(compute) == ["compute1", "compute2", "compute3"]
    assert discover_hosts(compute, aggregate="rack-a") == ["compute1"]
    assert discover_hosts(compute, aggregate="1") == ["compute1"]
    assert discover_hosts(compute, availability_zone="az1") == ["compute2"]
    assert discover_hosts(compute, aggregate="rack-a", availability_zone="az1") == []
    with pytest.raises(NotFound):
        discover_hosts(compute, aggregate="nope")
    with pytest.raises(NotFound):
        discover_hosts(compute, availability_zone="nope")
