"""``openstack vigil NOUN VERB``: the commands of the ``vigil`` CLI as OpenStackClient ones.

Each is the ``vigil`` command of the same words: the same arguments (taken from
``vigil.cli.main``'s parser, validation included) and the same handler, so the same
requests. What the handler would print with ``--json`` is caught and handed to OSC's
formatters: lists are ``Lister``s, single records ``ShowOne``s (``-f table|json|yaml|
value|csv``, ``-c COLUMN``), deletions ``Command``s that print nothing.

A table shows vigil's cells (local times, durations, yes/no); ``-f json|yaml|value|csv``
print the API's raw values. A list's columns are vigil's headers in title case (``Name``,
``Default Policy``); a record's fields are the API's names (``name``, ``default_policy``).
"""

from __future__ import annotations

import argparse
import io
import types
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar, cast

from cliff.columns import FormattableColumn
from osc_lib import exceptions
from osc_lib.command import command

from vigil.cli import main as cli
from vigil.cli import output
from vigil.cli.client import ApiError, VigilClient
from vigil.cli.output import Column, Output

# The vigil commands that are not OSC ones, and why.
NOT_IN_OSC = {
    ("demo",): "runs a simulated cloud on this machine; calls no API",
    ("import", "masakari"): "reads Masakari through a cloud of its own (--os-cloud)",
}

_PARSERS = cli.commands()


class _Caught(Output):
    """What a handler of the ``vigil`` CLI shows with ``--json``: the record or records,
    and the columns its table would have (None: a document of its own)."""

    def __init__(self) -> None:
        super().__init__(as_json=True, stream=io.StringIO())
        self.columns: Sequence[Column] | None = None
        self.data: Any = None

    def json(self, data: Any) -> None:
        self.data = data

    def one(self, columns: Sequence[Column], item: Mapping[str, Any]) -> None:
        self.columns, self.data = columns, item

    def many(self, columns: Sequence[Column], items: Sequence[Mapping[str, Any]]) -> None:
        self.columns, self.data = columns, list(items)


class Cell(FormattableColumn[Any]):
    """An API value that a table shows as ``text``."""

    def __init__(self, value: Any, text: str) -> None:
        super().__init__(value)
        self._text = text

    def human_readable(self) -> str:
        return self._text


def _cell(column: Column, item: Mapping[str, Any]) -> Cell:
    """A column's cell: the raw field when the column shows one field, else its text."""
    shown = column[1](item)
    return Cell(item.get(column[1].key) if isinstance(column[1], output.Field) else shown, shown)


def _list_header(column: Column) -> str:
    return " ".join(w if w in ("ID", "URL") else w.capitalize() for w in column[0].split())


def _field_name(column: Column) -> str:
    header, show = column
    return show.key if isinstance(show, output.Field) else header.lower().replace(" ", "_")


def _inline(value: Any, key: str = "") -> str:
    """A value on one line; a field named ``*_at`` holds a time (epoch seconds)."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_inline(v, str(k))}" for k, v in value.items()) or "-"
    if isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
        return "; ".join(_inline(v) for v in value)
    if key.endswith("_at") and isinstance(value, int | float) and not isinstance(value, bool):
        return output.timestamp(value)
    return output.text(value)


def _text(value: Any) -> str:
    """A value of a document in a table cell: a mapping one key a line, a list of records
    one record a line."""
    if isinstance(value, Mapping):
        return "\n".join(f"{k}: {_inline(v, str(k))}" for k, v in value.items()) or "-"
    if isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
        return "\n".join(_inline(v) for v in value)
    return output.text(value)


class _Vigil(command.Command):
    """The ``vigil`` command ``words``: its arguments, its handler."""

    words: ClassVar[tuple[str, ...]] = ()

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        for action in _PARSERS[self.words]._actions:
            if not isinstance(action, argparse._HelpAction) and action.dest != "json":
                parser._add_action(action)
        return parser

    def caught(self, parsed_args: argparse.Namespace) -> _Caught:
        """Runs the ``vigil`` handler; what it would have printed."""
        # OSC adds the attribute (API_NAME) to its ClientManager when it loads the plugin.
        client: VigilClient = self.app.client_manager.vigil  # type: ignore[attr-defined]
        caught = _Caught()
        try:
            _PARSERS[self.words].get_default("handler")(client, parsed_args, caught)
        except (ApiError, cli.UsageError) as exc:
            raise exceptions.CommandError(str(exc)) from None
        return caught


class VigilCommand(_Vigil):
    """The ``vigil`` command ``words``, printing nothing (OSC's deletions do not)."""

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        self.caught(parsed_args)


class VigilLister(_Vigil, command.Lister):
    """The ``vigil`` list ``words``: a row per record, vigil's columns."""

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[list[str], list[list[Cell]]]:
        caught = self.caught(parsed_args)
        columns = caught.columns or ()
        return [_list_header(c) for c in columns], [
            [_cell(c, item) for c in columns] for item in caught.data
        ]


class VigilShowOne(_Vigil, command.ShowOne):
    """The ``vigil`` command ``words`` that shows one record: vigil's fields, or (for a
    document of its own) ``columns``, or else every field of the document."""

    columns: ClassVar[Sequence[Column] | None] = None

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[list[str], list[Cell]]:
        caught = self.caught(parsed_args)
        columns = caught.columns or self.columns
        if columns is None:
            names = list(caught.data)
            return names, [Cell(caught.data[n], _text(caught.data[n])) for n in names]
        return [_field_name(c) for c in columns], [_cell(c, caught.data) for c in columns]


C = TypeVar("C", bound=_Vigil)


def _command(base: type[C], *words: str, columns: Sequence[Column] | None = None) -> type[C]:
    """``base`` for the ``vigil`` command ``words``, named verb then noun (``ListHost``)."""
    name = "".join(p.capitalize() for w in (*words[1:], words[0]) for p in w.split("-"))
    attrs: dict[str, Any] = {
        "words": words,
        "_description": _PARSERS[words].description,
        "__module__": __name__,
        "__qualname__": name,
    }
    if columns is not None:
        attrs["columns"] = columns
    return cast("type[C]", types.new_class(name, (base,), exec_body=lambda ns: ns.update(attrs)))


ListSegment = _command(VigilLister, "segment", "list")
ShowSegment = _command(VigilShowOne, "segment", "show")
CreateSegment = _command(VigilShowOne, "segment", "create")
UpdateSegment = _command(VigilShowOne, "segment", "update")
DeleteSegment = _command(VigilCommand, "segment", "delete")
ResumeSegment = _command(VigilShowOne, "segment", "resume")

ListHost = _command(VigilLister, "host", "list")
ShowHost = _command(VigilShowOne, "host", "show")
CreateHost = _command(VigilShowOne, "host", "create")
UpdateHost = _command(VigilShowOne, "host", "update")
DeleteHost = _command(VigilCommand, "host", "delete")
RestoreHost = _command(VigilShowOne, "host", "restore")
ServicesHost = _command(VigilShowOne, "host", "services")

ListInstance = _command(VigilLister, "instance", "list")
ShowInstance = _command(VigilShowOne, "instance", "show")
SetPolicyInstance = _command(VigilShowOne, "instance", "set-policy")
UnsetPolicyInstance = _command(VigilCommand, "instance", "unset-policy")
EvacuateInstance = _command(VigilShowOne, "instance", "evacuate", columns=output.RECOVERY)
RestartInstance = _command(VigilShowOne, "instance", "restart")

ListEvent = _command(VigilLister, "event", "list")

ListSubscription = _command(VigilLister, "subscription", "list")
ShowSubscription = _command(VigilShowOne, "subscription", "show")
CreateSubscription = _command(VigilShowOne, "subscription", "create")
DeleteSubscription = _command(VigilCommand, "subscription", "delete")
DeadLettersSubscription = _command(VigilLister, "subscription", "dead-letters")


class TestSubscription(VigilShowOne):
    """Send a test event now; an event not delivered is an error, as in ``vigil``."""

    words = ("subscription", "test")
    _description = _PARSERS[words].description or ""

    def caught(self, parsed_args: argparse.Namespace) -> _Caught:
        caught = super().caught(parsed_args)
        if not caught.data.get("delivered"):
            raise exceptions.CommandError(
                f"test event not delivered to {parsed_args.name}: {caught.data.get('error')}"
            )
        return caught


ListFailure = _command(VigilLister, "failure", "list")
ShowFailure = _command(VigilShowOne, "failure", "show")
HandledFailure = _command(VigilShowOne, "failure", "handled")
DismissFailure = _command(VigilShowOne, "failure", "dismiss")

_STEPS: Column = ("STEPS", output.Field("steps", lambda s: output.records(output.STEP, s or [])))
ListRecovery = _command(VigilLister, "recovery", "list")
ShowRecovery = _command(VigilShowOne, "recovery", "show", columns=[*output.RECOVERY, _STEPS])
RetryRecovery = _command(VigilShowOne, "recovery", "retry")

ListGuestFailure = _command(VigilLister, "guest-failure", "list")
ShowGuestFailure = _command(VigilShowOne, "guest-failure", "show")
HandledGuestFailure = _command(VigilShowOne, "guest-failure", "handled")

ListApp = _command(VigilLister, "app", "list")
ShowApp = _command(VigilShowOne, "app", "show")
CloseApp = _command(VigilShowOne, "app", "close")
CredentialApp = _command(VigilShowOne, "app", "credential")

ListCluster = _command(VigilLister, "cluster", "list")
ShowCluster = _command(VigilShowOne, "cluster", "show")
CreateCluster = _command(VigilShowOne, "cluster", "create")
VerifyCluster = _command(VigilLister, "cluster", "verify")
DeleteCluster = _command(VigilCommand, "cluster", "delete")
AdoptCluster = _command(VigilShowOne, "cluster", "adopt")


class UserDataCluster(VigilCommand):
    """The members' cloud-init document, printed as it is (not a record)."""

    words = ("cluster", "user-data")
    _description = _PARSERS[words].description or ""

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        caught = self.caught(parsed_args)
        stream = caught.stream
        assert isinstance(stream, io.StringIO)
        self.app.stdout.write(stream.getvalue())


class StackParametersCluster(UserDataCluster):
    """An external cluster's Heat environment, printed as it is (not a record)."""

    words = ("cluster", "stack-parameters")
    _description = _PARSERS[words].description or ""


Pause = _command(VigilShowOne, "pause")
Resume = _command(VigilShowOne, "resume")
Status = _command(VigilShowOne, "status")
