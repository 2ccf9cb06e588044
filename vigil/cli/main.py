"""``vigil``: the operator's command line (nouns and verbs, as in the ``openstack`` CLI).

    vigil [--url URL] [--token TOKEN | --token-file FILE] [--json] NOUN VERB [ARGS]

Nouns: ``segment``, ``host``, ``instance``, ``failure``, ``recovery``, ``guest-failure``,
``app``, ``event``, ``subscription``; and the cloud-wide
``pause``, ``resume`` and ``status``. ``demo`` runs the simulated demonstration.

Exit status: 0 done; 1 the server refused or could not be reached (one line on stderr,
never a traceback); 2 the command line was wrong. The token is read from ``--token``,
``--token-file``, ``VIGIL_TOKEN`` or ``VIGIL_TOKEN_FILE`` (in that order) and is never
printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from vigil.cli import output
from vigil.cli.client import DEFAULT_TIMEOUT, DEFAULT_URL, ApiError, Json, VigilClient
from vigil.cli.output import Output
from vigil.model import FailureStatus, GuestFailureStatus, HaPolicy, HostState, RecoveryStatus

Handler = Callable[[VigilClient, argparse.Namespace, Output], None]

POLICIES = [p.value for p in HaPolicy]
ACTIVE_RECOVERY = (RecoveryStatus.PENDING, RecoveryStatus.RUNNING, RecoveryStatus.PAUSED)
MAX_LIMIT = 1000  # the API's largest page


class UsageError(Exception):
    """A command line that parses but cannot mean anything (exit 2, like argparse)."""


# ------------------------------------------------------------------------ argument types


def fence_method(spec: str) -> Json:
    """``DRIVER[:key=value,key=value]`` as the API's fence method body.

    Messages name options by position, never by value: a value may be a password.
    """
    driver, _, rest = spec.partition(":")
    driver = driver.strip()
    if not driver:
        raise argparse.ArgumentTypeError("expected DRIVER[:key=value,...], e.g. sim:host=node1")
    options: dict[str, str] = {}
    for pos, item in enumerate(rest.split(",") if rest else [], start=1):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"fence {driver}: option {pos} is not key=value")
        if key in options:
            raise argparse.ArgumentTypeError(f"fence {driver}: option {key} given twice")
        options[key] = value
    return {"driver": driver, "options": options}


def share(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None


# ---------------------------------------------------------------------------- segments


def _segment_fields(args: argparse.Namespace) -> Json:
    values = {
        "description": args.description,
        "default_policy": args.default_policy,
        "max_failed_share": args.max_failed_share,
        "max_parallel_evacuations": args.max_parallel_evacuations,
    }
    return {k: v for k, v in values.items() if v is not None}


def segment_list(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.many(output.SEGMENT, c.list_segments())


def segment_show(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.SEGMENT, c.get_segment(args.name))


def segment_create(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.SEGMENT, c.create_segment(args.name, **_segment_fields(args)))


def segment_update(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    changes = _segment_fields(args)
    if not changes:
        raise UsageError("nothing to change: give at least one option")
    out.one(output.SEGMENT, c.update_segment(args.name, **changes))


def segment_delete(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    c.delete_segment(args.name)
    out.line(f"segment {args.name} deleted")


def segment_resume(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.SEGMENT, c.update_segment(args.name, paused=False))


# ------------------------------------------------------------------------------- hosts


def host_list(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.many(output.HOST_LIST, c.list_hosts(args.segment))


def host_show(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.HOST, c.get_host(args.name))


def host_services(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    report = c.get_host_services(args.name)
    if out.as_json:
        out.json(report)
        return
    rows = [{"name": n, **s} for n, s in sorted(report["services"].items())]
    print(output.records(output.SERVICE, rows), file=out.stream)
    hold = report.get("compute_hold") or ""
    if hold == "disabled":
        state = f"disabled by vigil ({report.get('compute_hold_reason')})"
    elif hold == "left":
        state = f"disabled by someone else, left as is ({report.get('compute_hold_reason')})"
    else:
        state = "not held by vigil"
    print(f"\ncompute service: {state}", file=out.stream)


def host_create(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    host = c.create_host(
        args.name,
        args.segment,
        maintenance=args.maintenance,
        reserved=args.reserved,
        fencing=args.fence or [],
    )
    out.one(output.HOST, host)


def host_update(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    values = {"segment": args.segment, "maintenance": args.maintenance, "reserved": args.reserved}
    changes: Json = {k: v for k, v in values.items() if v is not None}
    if args.fence is not None and args.no_fence:
        raise UsageError("--fence and --no-fence contradict each other")
    if args.fence is not None:
        changes["fencing"] = args.fence  # replaces every level, in the order given
    elif args.no_fence:
        changes["fencing"] = []
    if not changes:
        raise UsageError("nothing to change: give at least one option")
    out.one(output.HOST, c.update_host(args.name, **changes))


def host_delete(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    c.delete_host(args.name)
    out.line(f"host {args.name} deleted")


def host_restore(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.HOST, c.restore_host(args.name))


# --------------------------------------------------------------------------- instances


def instance_list(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.many(output.INSTANCE, c.list_instances(args.host))


def instance_show(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.INSTANCE, c.get_instance(args.id))


def instance_set_policy(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.INSTANCE, c.set_instance_policy(args.id, args.policy, args.priority))


def instance_unset_policy(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    c.delete_instance_policy(args.id)
    out.line(f"instance {args.id}: policy override removed")


# -------------------------------------------------------------- failures and recoveries


def failure_list(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    items = c.list_failures(host=args.host, status=args.status, limit=args.limit)
    out.many(output.FAILURE, items)


def failure_show(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.FAILURE, c.get_failure(args.id))


def recovery_list(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    items = c.list_recoveries(host=args.host, status=args.status, limit=args.limit)
    out.many(output.RECOVERY_LIST, items)


def recovery_show(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    recovery = c.get_recovery(args.id)
    if out.as_json:
        out.json(recovery)
        return
    print(output.fields(output.RECOVERY, recovery), file=out.stream)
    print(file=out.stream)
    print(output.records(output.STEP, recovery.get("steps") or []), file=out.stream)


def recovery_retry(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.RECOVERY, c.retry_recovery(args.id))


# --------------------------------------------------------- consumers: events and actions


def instance_evacuate(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    recovery = c.evacuate_instance(args.id, args.target_host)
    out.line(f"evacuation of {args.id} requested (recovery {recovery['id']} of {recovery['host']})")
    if out.as_json:
        out.json(recovery)


def instance_restart(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    result = c.restart_instance(args.id)
    out.line(f"instance {args.id} restarted")
    if out.as_json:
        out.json(result)


def failure_handled(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.FAILURE, c.failure_handled(args.id, args.reason))


def import_masakari(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    # Imported here: openstacksdk is slow to import and only this command needs it.
    import openstack
    from keystoneauth1 import exceptions as ks_exceptions
    from openstack import exceptions as sdk_exceptions

    from vigil.cli import import_masakari as imp

    try:
        conn = openstack.connect(cloud=args.os_cloud) if args.os_cloud else openstack.connect()
        source = imp.read_masakari(conn)
    except (sdk_exceptions.SDKException, ks_exceptions.ClientException, OSError) as exc:
        where = f"cloud {args.os_cloud}" if args.os_cloud else "OS_CLOUD / OS_* variables"
        raise ApiError(0, f"cannot read Masakari ({where}): {exc}") from None
    outcomes = imp.import_segments(source, imp.MasakariApi(c), c.get_host, dry_run=args.dry_run)
    if out.as_json:
        out.json({"outcomes": [o.as_json() for o in outcomes], "summary": imp.summary(outcomes)})
        return
    out.line(
        output.table(
            ["KIND", "NAME", "SEGMENT", "RESULT", "MISSING", "DETAIL"],
            [
                [o.kind, o.name, o.segment, o.result, ",".join(o.missing) or "-", o.detail]
                for o in outcomes
            ],
        )
    )
    out.line(imp.summary(outcomes))


def failure_dismiss(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.FAILURE, c.failure_dismiss(args.id, args.reason))


def app_list(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.many(output.APP, c.list_apps(host=args.host, failing=args.failing))


def app_show(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.APP, c.get_app(args.instance))


def app_close(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.APP, c.close_app(args.instance, args.reason, args.by))


def app_credential(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.APP_CREDENTIAL, c.app_credential(args.instance))


def cluster_list(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.many(output.CLUSTER, c.list_clusters())


def cluster_show(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.CLUSTER, c.get_cluster(args.cluster))


def cluster_create(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    body = {
        "name": args.name,
        "size": args.size,
        "image": args.image,
        "flavor": args.flavor,
        "network": args.network,
        "vip": args.vip,
        "policy": args.policy,
        "external": args.external,
    }
    # what is not given is not sent: vigil-server names what a cluster it builds lacks
    made = c.create_cluster({k: v for k, v in body.items() if v is not None})
    out.one(output.CLUSTER, made)
    if made.get("status") == "error":
        raise ApiError(0, f"cluster {args.name} could not be built: {made.get('detail')}")


def cluster_verify(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    verified = c.verify_cluster(args.cluster)
    out.many(output.CLUSTER_CHECK, verified["checks"])
    if not verified["ok"]:
        failed = ", ".join(k["name"] for k in verified["checks"] if not k["ok"])
        raise ApiError(0, f"cluster {args.cluster}: not verified: {failed}")


def cluster_user_data(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    print(c.cluster_user_data(args.cluster), end="", file=out.stream)


def cluster_stack_parameters(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    text = json.dumps(c.cluster_stack_parameters(args.cluster), indent=2) + "\n"
    if args.output is None:
        print(text, end="", file=out.stream)
        return
    # the cluster's token and authkey: readable by the operator alone
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    out.line(f"cluster {args.cluster}: the stack's environment written to {args.output}")


def cluster_adopt(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.CLUSTER, c.adopt_cluster(args.cluster, args.server_group))


def cluster_delete(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    c.delete_cluster(args.cluster)
    out.line(f"cluster {args.cluster} deleted")


def guest_failure_list(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    items = c.list_guest_failures(instance_id=args.instance, status=args.status, limit=args.limit)
    out.many(output.GUEST_FAILURE, items)


def guest_failure_show(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.GUEST_FAILURE, c.get_guest_failure(args.id))


def guest_failure_handled(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.GUEST_FAILURE, c.guest_failure_handled(args.id, args.reason))


def event_list(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.many(output.EVENT, c.list_events(after=args.after, host=args.host, limit=args.limit))


def subscription_create(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    if args.secret_file:
        secret = Path(args.secret_file).read_text().splitlines()[0].strip()
    else:
        secret = os.environ.get("VIGIL_WEBHOOK_SECRET", "")
    if not secret:
        raise UsageError("give the signing secret with --secret-file or VIGIL_WEBHOOK_SECRET")
    out.one(
        output.SUBSCRIPTION,
        c.create_subscription(args.name, args.webhook_url, secret, args.event_type or []),
    )


def subscription_list(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.many(output.SUBSCRIPTION, c.list_subscriptions())


def subscription_show(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.SUBSCRIPTION, c.get_subscription(args.name))


def subscription_delete(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    c.delete_subscription(args.name)
    out.line(f"subscription {args.name} deleted")


def subscription_test(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    result = c.test_subscription(args.name)
    if out.as_json:
        out.json(result)
    elif result.get("delivered"):
        out.line(f"test event {result['event_id']} delivered to {args.name}")
    else:
        raise ApiError(502, f"test event not delivered to {args.name}: {result.get('error')}")


def dead_letter_list(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.many(output.DEAD_LETTER, c.list_dead_letters(args.sink))


# ------------------------------------------------------------------- cloud-wide control


def pause(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.CONTROL, c.pause(args.reason))


def resume(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    out.one(output.CONTROL, c.resume())


def status(c: VigilClient, args: argparse.Namespace, out: Output) -> None:
    control = c.get_control()
    hosts = c.list_hosts()
    segments = c.list_segments()
    # The API filters recoveries by one status at a time: one call per active status.
    active: list[Json] = []
    for s in ACTIVE_RECOVERY:
        active.extend(c.list_recoveries(status=s.value, limit=MAX_LIMIT))
    active.sort(key=lambda r: (r.get("created_at") or 0, r.get("id") or 0), reverse=True)
    counts = {s.value: 0 for s in HostState}
    for h in hosts:
        counts[h["state"]] = counts.get(h["state"], 0) + 1
    maintenance = sum(1 for h in hosts if h.get("maintenance"))
    paused_segments = [s for s in segments if s.get("paused")]
    servers = c.get_servers()
    live = set(servers.get("members") or ())
    for owner in servers.get("owners") or ():
        owner["live"] = owner.get("owner") in live

    if out.as_json:
        out.json(
            {
                "control": control,
                "servers": servers,
                "hosts": counts,
                "hosts_in_maintenance": maintenance,
                "paused_segments": paused_segments,
                "active_recoveries": active,
            }
        )
        return
    p = out.stream
    if control.get("paused"):
        since = output.timestamp(control.get("changed_at"))
        print(f"automatic recovery: PAUSED since {since}: {control.get('reason')}", file=p)
    else:
        print("automatic recovery: active", file=p)
    _print_servers(servers, p)
    per_state = ", ".join(f"{n} {state}" for state, n in counts.items())
    print(f"hosts: {len(hosts)} ({per_state}; {maintenance} in maintenance)", file=p)
    for seg in paused_segments:
        print(f"segment {seg['name']} paused: {output.text(seg.get('pause_reason'))}", file=p)
    if active:
        print(f"\nactive recoveries: {len(active)}", file=p)
        print(output.records(output.RECOVERY_LIST, active), file=p)
    else:
        print("active recoveries: none", file=p)


def _print_servers(servers: Json, p: TextIO) -> None:
    """The coordination backend as the answering server sees it, the live servers, and
    each segment's owner and epoch by the store."""
    health = "reachable" if servers.get("backend_healthy") else f"UNREACHABLE: {servers['error']}"
    print(f"coordination: {servers.get('backend')}, {health}", file=p)
    members = ", ".join(servers.get("members") or ()) or "none"
    acting = ", ".join(f"{s} (epoch {e})" for s, e in sorted(servers["acting_on"].items()))
    print(
        f"servers: {members}; {servers.get('member')} answered, acting on {acting or 'no segment'}",
        file=p,
    )
    if servers.get("owners"):
        print(output.records(output.SEGMENT_OWNERS, servers["owners"]), file=p)


# ------------------------------------------------------------------------------ parser


def _add_segment_options(p: argparse.ArgumentParser, *, creating: bool) -> None:
    p.add_argument("--description", help="free text")
    p.add_argument(
        "--default-policy",
        choices=POLICIES,
        help="policy of instances without their own (server default: off)" if creating else None,
    )
    p.add_argument(
        "--max-failed-share",
        type=share,
        metavar="F",
        help="storm guard: pause when more than this share (0..1) of the hosts fail at once",
    )
    p.add_argument(
        "--max-parallel-evacuations",
        type=int,
        metavar="N",
        help="evacuations in flight at once per recovery",
    )


def _add_fence_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fence",
        action="append",
        type=fence_method,
        metavar="DRIVER[:K=V,...]",
        help="a fencing level, e.g. sim:host=compute-1; repeat for several levels, tried in "
        "order (on update: replaces all levels)",
    )


DEMO_HELP = "run vigil against a simulated cloud and watch it recover a failed host"


def run_demo(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """``vigil demo``: its options belong to vigil.cli.demo, imported only now.

    Importing it loads the whole server (about a second), which no other command needs;
    and a missing or broken demo module must not take the operator's commands down with it.
    """
    try:
        from vigil.cli.demo import (  # type: ignore[import-not-found,unused-ignore]
            add_arguments,
            run,
        )
    except ImportError as exc:
        print(f"error: vigil demo is unavailable: {exc}", file=sys.stderr)
        return 1
    parser = argparse.ArgumentParser(prog="vigil demo", description=DEMO_HELP)
    add_arguments(parser)
    demo_args = parser.parse_args(extra, namespace=argparse.Namespace(json=args.json))
    code: int = run(demo_args)
    return code


def build_parser() -> argparse.ArgumentParser:
    # --json is accepted after the verb too ("vigil host list --json"); SUPPRESS keeps a
    # sub-command from resetting a --json given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the API's JSON"
    )

    parser = argparse.ArgumentParser(
        prog="vigil",
        description="Operate vigil, high availability for OpenStack instances.",
        epilog="Exit status: 0 done, 1 refused by or cannot reach the server, 2 usage error.",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("VIGIL_URL", DEFAULT_URL),
        help="vigil-server API (env VIGIL_URL; default %(default)s)",
    )
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument(
        "--token", help="API bearer token (env VIGIL_TOKEN; prefer a file: others can see argv)"
    )
    auth.add_argument(
        "--token-file",
        metavar="FILE",
        help="file whose first line is the token (env VIGIL_TOKEN_FILE)",
    )
    auth.add_argument(
        "--os-cloud",
        dest="vigil_os_cloud",  # not "os_cloud": `vigil import masakari --os-cloud` is the source
        default=None,
        metavar="CLOUD",
        help="authenticate with Keystone as this cloud of clouds.yaml (env OS_CLOUD, when no "
        "token is given): for a vigil-server with [api] auth_strategy = keystone; its "
        "catalog's 'ha' endpoint is the URL unless --url or VIGIL_URL says otherwise",
    )
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument(
        "--os-cacert",
        metavar="FILE",
        default=os.environ.get("OS_CACERT"),
        help="CA bundle (PEM) to verify an https:// server's certificate with (env OS_CACERT; "
        "default: the cloud's cacert in clouds.yaml with --os-cloud, else the system's trust "
        "store)",
    )
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the server's TLS certificate: for tests only, never in production",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds (default %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    nouns = parser.add_subparsers(dest="noun", metavar="COMMAND", required=True)

    def verb(group: Any, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(
            name, parents=[common], help=help, description=help
        )
        p.set_defaults(handler=handler, usage=p)
        return p

    def noun(name: str, help: str) -> Any:
        p = nouns.add_parser(name, help=help)
        return p.add_subparsers(dest="verb", metavar="VERB", required=True)

    # segment
    seg = noun("segment", "failover domains")
    verb(seg, "list", segment_list, "list segments")
    verb(seg, "show", segment_show, "show a segment").add_argument("name")
    p = verb(seg, "create", segment_create, "create a segment")
    p.add_argument("name")
    _add_segment_options(p, creating=True)
    p = verb(seg, "update", segment_update, "change a segment")
    p.add_argument("name")
    _add_segment_options(p, creating=False)
    verb(seg, "delete", segment_delete, "delete an empty segment").add_argument("name")
    verb(seg, "resume", segment_resume, "resume a segment the storm guard paused").add_argument(
        "name"
    )

    # host
    host = noun("host", "compute hosts vigil watches")
    verb(host, "list", host_list, "list hosts").add_argument("--segment", metavar="S")
    verb(host, "show", host_show, "show a host").add_argument("name")
    p = verb(host, "create", host_create, "add a host")
    p.add_argument("name")
    p.add_argument("--segment", required=True, metavar="S")
    p.add_argument("--maintenance", action="store_true", help="do not recover it")
    p.add_argument("--reserved", action="store_true", help="keep it empty as a failover target")
    _add_fence_option(p)
    p = verb(host, "update", host_update, "change a host")
    p.add_argument("name")
    p.add_argument("--segment", metavar="S")
    p.add_argument("--maintenance", action=argparse.BooleanOptionalAction)
    p.add_argument("--reserved", action=argparse.BooleanOptionalAction)
    _add_fence_option(p)
    p.add_argument("--no-fence", action="store_true", help="remove every fencing level")
    verb(host, "delete", host_delete, "remove a host").add_argument("name")
    verb(host, "restore", host_restore, "put a recovered host back into use").add_argument("name")
    verb(
        host, "services", host_services, "nova-compute, libvirtd... as the host's agent sees them"
    ).add_argument("name")

    # instance
    inst = noun("instance", "instances and their HA policy")
    verb(
        inst, "list", instance_list, "with --host: its instances; without: policy overrides"
    ).add_argument("--host", metavar="H")
    verb(inst, "show", instance_show, "show an instance's effective policy").add_argument("id")
    p = verb(inst, "set-policy", instance_set_policy, "override an instance's HA policy")
    p.add_argument("id")
    p.add_argument("policy", choices=POLICIES)
    p.add_argument("--priority", type=int, default=0, metavar="N", help="higher goes first")
    verb(
        inst, "unset-policy", instance_unset_policy, "remove an instance's policy override"
    ).add_argument("id")
    p = verb(inst, "evacuate", instance_evacuate, "evacuate an instance of a fenced host")
    p.add_argument("id")
    p.add_argument("--target-host", metavar="H", help="where to (default: Nova's scheduler)")
    verb(inst, "restart", instance_restart, "hard-reboot an instance").add_argument("id")

    # events and subscriptions (custom recovery)
    ev = noun("event", "what vigil observed and did")
    p = verb(ev, "list", event_list, "list events, oldest first")
    p.add_argument("--after", type=int, metavar="SEQ", help="only events after this seq")
    p.add_argument("--host", metavar="H")
    p.add_argument("--limit", type=int, metavar="N")
    sub = noun("subscription", "webhooks that receive events")
    verb(sub, "list", subscription_list, "list subscriptions")
    verb(sub, "show", subscription_show, "show a subscription").add_argument("name")
    p = verb(sub, "create", subscription_create, "POST events to a URL, signed")
    p.add_argument("name")
    p.add_argument(
        "--target-url",
        dest="webhook_url",
        required=True,
        metavar="URL",
        help="http(s) URL events are POSTed to",
    )
    p.add_argument(
        "--secret-file",
        metavar="FILE",
        help="signing secret (first line; or env VIGIL_WEBHOOK_SECRET)",
    )
    p.add_argument(
        "--event-type",
        action="append",
        metavar="TYPE",
        help="only these (exact or prefix.*); repeatable; default all",
    )
    verb(sub, "delete", subscription_delete, "delete a subscription").add_argument("name")
    verb(sub, "test", subscription_test, "send a test event now").add_argument("name")
    verb(sub, "dead-letters", dead_letter_list, "events given up on").add_argument(
        "--sink", metavar="SINK"
    )

    # failure, recovery
    for name, lister, shower, statuses in (
        ("failure", failure_list, failure_show, [s.value for s in FailureStatus]),
        ("recovery", recovery_list, recovery_show, [s.value for s in RecoveryStatus]),
    ):
        group = noun(name, f"host {name}s" if name == "failure" else "host recoveries")
        p = verb(group, "list", lister, f"list {name} records, newest first")
        p.add_argument("--host", metavar="H")
        p.add_argument("--status", choices=statuses)
        p.add_argument("--limit", type=int, metavar="N", help="at most N (server default 100)")
        verb(group, "show", shower, f"show one {name}").add_argument("id", type=int)
        if name == "failure":
            p = verb(group, "handled", failure_handled, "mark a failure taken care of")
            p.add_argument("id", type=int)
            p.add_argument("--reason", default="handled by operator")
            p = verb(
                group,
                "dismiss",
                failure_dismiss,
                "take back a declaration the storm guard paused before it acted",
            )
            p.add_argument("id", type=int)
            p.add_argument("--reason", default="dismissed by operator")
        if name == "recovery":
            verb(
                group, "retry", recovery_retry, "retry a failed recovery once its cause is fixed"
            ).add_argument("id", type=int)

    # guest-OS failures
    gf = noun("guest-failure", "guest OS failures the agents report (watchdog, crash, I/O)")
    p = verb(gf, "list", guest_failure_list, "list guest failures, newest first")
    p.add_argument("--instance", metavar="ID")
    p.add_argument("--status", choices=[s.value for s in GuestFailureStatus])
    p.add_argument("--limit", type=int, metavar="N", help="at most N (server default 100)")
    verb(gf, "show", guest_failure_show, "show one guest failure").add_argument("id", type=int)
    p = verb(gf, "handled", guest_failure_handled, "mark a guest failure taken care of")
    p.add_argument("id", type=int)
    p.add_argument("--reason", default="handled by operator")

    # application checks
    ap = noun("app", "application checks of instances, and their failures")
    p = verb(ap, "list", app_list, "list instances with application checks")
    p.add_argument("--host")
    p.add_argument("--failing", action=argparse.BooleanOptionalAction, default=None)
    verb(ap, "show", app_show, "show an instance's checks and failure").add_argument("instance")
    p = verb(ap, "close", app_close, "close an instance's application failure (escalated)")
    p.add_argument("instance")
    p.add_argument("--reason", default="closed by an operator")
    p.add_argument("--by", default="operator")
    p = verb(ap, "credential", app_credential, "the credential for an application's heartbeats")
    p.add_argument("instance")

    # in-guest clusters
    cl = noun("cluster", "in-guest Pacemaker clusters: built whole, fenced through vigil")
    verb(cl, "list", cluster_list, "list clusters")
    verb(cl, "show", cluster_show, "show a cluster and its members").add_argument("cluster")
    p = verb(
        cl,
        "create",
        cluster_create,
        "build a cluster: ports with fixed addresses, an anti-affinity group, members "
        "booted with the generated corosync and Pacemaker configuration",
    )
    p.add_argument("name", help="lower-case letters, digits and '-'; members are NAME-1...")
    p.add_argument("--size", type=int, default=3, help="members, 2 to 8 (default 3)")
    p.add_argument("--image", help="needed unless --external")
    p.add_argument("--flavor", help="needed unless --external")
    p.add_argument("--network", help="the Neutron network's name or id; needed unless --external")
    p.add_argument(
        "--external",
        action="store_true",
        help="a Heat stack makes it (doc/heat/): record it, then stack-parameters and adopt",
    )
    p.add_argument(
        "--vip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reserve a service address Pacemaker moves between members (default: yes)",
    )
    p.add_argument(
        "--policy",
        choices=["notify", "keep-running"],
        default="notify",
        help="the members' HA policy (default notify: the cluster moves its service)",
    )
    p = verb(cl, "verify", cluster_verify, "check members, hosts and ports (exit 1 if not ok)")
    p.add_argument("cluster")
    p = verb(cl, "user-data", cluster_user_data, "print the members' cloud-init (has secrets)")
    p.add_argument("cluster")
    p = verb(
        cl,
        "stack-parameters",
        cluster_stack_parameters,
        "print an external cluster's Heat environment (has secrets)",
    )
    p.add_argument("cluster")
    p.add_argument("--output", "-o", help="write it to this file (mode 0600) instead")
    p = verb(cl, "adopt", cluster_adopt, "take an external cluster's members from its stack")
    p.add_argument("cluster")
    p.add_argument("--server-group", required=True, help="the stack's server group (its id)")
    verb(cl, "delete", cluster_delete, "delete a cluster and what was built for it").add_argument(
        "cluster"
    )

    # cloud-wide
    def cloud_wide(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = nouns.add_parser(
            name, parents=[common], help=help, description=help
        )
        p.set_defaults(handler=handler, usage=p)
        return p

    p = cloud_wide("pause", pause, "pause all automatic recovery")
    p.add_argument("--reason", required=True, help="recorded and shown by status")
    cloud_wide("resume", resume, "resume automatic recovery")
    cloud_wide("status", status, "pause, servers and segment owners, hosts, recoveries")

    # import from another HA service
    imp = noun("import", "move another HA service's configuration to vigil")
    p = verb(
        imp,
        "masakari",
        import_masakari,
        "copy a Masakari deployment's segments and hosts (through its API) and name the "
        "hosts vigil cannot protect yet",
    )
    p.add_argument(
        "--os-cloud",
        metavar="CLOUD",
        default=os.environ.get("OS_CLOUD"),
        help="the cloud in clouds.yaml whose instance-ha endpoint is Masakari's "
        "(default: OS_CLOUD, else the OS_* variables)",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would be created")

    # Its own options are added by run_demo (add_help=False lets "vigil demo --help" through).
    p = nouns.add_parser("demo", parents=[common], add_help=False, help=DEMO_HELP)
    p.set_defaults(standalone=run_demo)
    return parser


def commands() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command of ``build_parser()`` by its words (``("host", "list")``,
    ``("pause",)``): its parser, whose ``description`` is its help and whose default
    ``handler`` runs it (``demo`` has none: it parses its own options)."""
    found: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def walk(p: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[words] = p
        for action in subs:
            for name, sub in action.choices.items():
                walk(sub, (*words, name))

    walk(build_parser(), ())
    return found


def _token(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    if args.token is not None:
        return str(args.token)
    path = args.token_file
    if path is None and "VIGIL_TOKEN" in os.environ:
        return os.environ["VIGIL_TOKEN"]
    path = path or os.environ.get("VIGIL_TOKEN_FILE")
    if not path:
        return ""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        parser.error(f"cannot read the token file {path}: {exc.strerror}")
    if not lines or not lines[0].strip():
        parser.error(f"the token file {path} is empty")
    return lines[0].strip()


def _keystone(cloud: str, url: str, tls: dict[str, Any]) -> tuple[str, str, bool | str]:
    """A Keystone token for ``cloud`` of clouds.yaml (openstacksdk's loader: OS_* and
    clouds.yaml as every OpenStack client reads them), the URL: ``url`` if given (--url,
    VIGIL_URL), else the catalog's endpoint of service type ``ha``; and how to verify
    TLS: the cloud's ``cacert``/``verify``, unless ``tls`` (--os-cacert, --insecure) says
    otherwise."""
    import openstack.config

    region = openstack.config.OpenStackConfig().get_one(cloud=cloud, **tls)
    verify = region.get_requests_verify_args()[0]
    session = region.get_session()
    token = str(session.get_token())
    if "VIGIL_URL" not in os.environ and url == DEFAULT_URL:
        found = session.get_endpoint(service_type="ha", interface="public")
        if found:
            url = str(found)
    return token, url, True if verify is None else verify


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C is an answer, not a crash
        return 130


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if "standalone" in args:
            code: int = args.standalone(args, extra)
            return code
        if extra:  # parse_known_args is only for the demo's options; show the verb's usage
            args.usage.error(f"unrecognized arguments: {' '.join(extra)}")
        token = _token(parser, args)
    except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
        return exc.code if isinstance(exc.code, int) else 1
    out = Output(as_json=args.json, stream=sys.stdout)
    url, keystone_token = args.url, ""
    verify: bool | str = False if args.insecure else args.os_cacert or True
    cloud = args.vigil_os_cloud or (None if token else os.environ.get("OS_CLOUD"))
    if cloud:
        tls: dict[str, Any] = {"insecure": True} if args.insecure else {}
        if args.os_cacert:
            tls["cacert"] = args.os_cacert
        try:
            keystone_token, url, verify = _keystone(cloud, args.url, tls)
        except Exception as exc:  # keystoneauth's and openstacksdk's errors: said, not raised
            print(
                f"error: Keystone authentication as cloud {cloud!r} failed: {exc}", file=sys.stderr
            )
            return 1
    try:
        with VigilClient(
            url, token, timeout=args.timeout, keystone_token=keystone_token, verify=verify
        ) as client:
            args.handler(client, args, out)
    except UsageError as exc:
        try:
            args.usage.error(str(exc))
        except SystemExit as usage_exit:
            return usage_exit.code if isinstance(usage_exit.code, int) else 2
    except ApiError as exc:
        hint = ""
        if exc.status == 401:
            hint = " (give the API token: --token-file, VIGIL_TOKEN or --token; or --os-cloud)"
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
