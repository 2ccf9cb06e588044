"""The OpenAPI description of vigil's Masakari API (served at /instance-ha/openapi.json).

Why written here rather than derived from pydantic models: the Masakari routes validate
their bodies by hand so that every refusal is Masakari's own (a 400 ``badRequest`` fault
with Masakari's message, never FastAPI's 422), and their handlers take the raw request.
So each route of the table in ``masakari.py`` is given, through FastAPI's own
``openapi_extra`` and ``responses``, the JSON Schemas below: the bodies as Masakari's
schemas (``masakari/api/openstack/ha/schemas``) accept them, the views vigil answers
with, the query parameters, and every status a route can answer with its fault body.
FastAPI still builds the document (paths, path parameters, operation ids), so it cannot
drift from the route table; schemathesis holds the API to it (tests/masakari).
"""

from __future__ import annotations

import re
from typing import Any

Schema = dict[str, Any]

_NAME: Schema = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^\S(.*\S)?$"}
_TEXT: Schema = {"type": ["string", "null"]}
_TIME: Schema = {"type": "string"}
_TIME_OR_NULL: Schema = {"type": ["string", "null"]}
_BOOL_TEXT = (
    r"^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Oo][Nn]|[Oo][Ff][Ff]|[Yy][Ee][Ss]|[Nn][Oo]|1|0)$"
)
_FLAG: Schema = {
    "oneOf": [{"type": "boolean"}, {"type": "string", "pattern": _BOOL_TEXT}],
}
RECOVERY_METHODS = ["auto", "reserved_host", "auto_priority", "rh_priority"]


def obj(properties: Schema, required: list[str] | None = None, extra: bool = False) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if not extra:
        schema["additionalProperties"] = False
    return schema


def _wrapped(key: str, inner: Schema) -> Schema:
    return obj({key: inner}, [key])


FAULT: Schema = {
    "type": "object",
    "description": "Masakari's fault: one key (badRequest, itemNotFound, …) with code and message",
    "minProperties": 1,
    "maxProperties": 1,
    "additionalProperties": obj(
        {"code": {"type": "integer"}, "message": {"type": "string"}}, ["code", "message"]
    ),
}
_COMMON: Schema = {
    "id": {"type": "integer"},
    "uuid": {"type": "string"},
    "created_at": _TIME,
    "updated_at": _TIME_OR_NULL,
    "deleted": {"type": "boolean"},
    "deleted_at": {"type": "null"},
}
SEGMENT: Schema = obj(
    {
        **_COMMON,
        "name": {"type": "string"},
        "description": _TEXT,
        "recovery_method": {"enum": RECOVERY_METHODS},
        "service_type": {"type": "string"},
        "enabled": {"type": "boolean"},
    },
    ["id", "uuid", "name", "recovery_method", "service_type", "enabled"],
    extra=True,
)
HOST: Schema = obj(
    {
        **_COMMON,
        "name": {"type": "string"},
        "failover_segment_id": {"type": "string"},
        "failover_segment": SEGMENT,
        "type": {"type": "string"},
        "reserved": {"type": "boolean"},
        "control_attributes": {"type": "string"},
        "on_maintenance": {"type": "boolean"},
    },
    ["id", "uuid", "name", "failover_segment_id", "type", "reserved", "on_maintenance"],
    extra=True,
)
_TASK: Schema = obj(
    {
        "name": {"type": "string"},
        "state": {"enum": ["PENDING", "RUNNING", "SUCCESS", "FAILURE"]},
        "progress": {"type": "number"},
        "progress_details": {"type": "array", "items": {"type": "object"}},
    },
    ["name", "state", "progress", "progress_details"],
    extra=True,
)
NOTIFICATION: Schema = obj(
    {
        "id": {"type": "integer"},
        "notification_uuid": {"type": "string"},
        "generated_time": _TIME,
        "source_host_uuid": {"type": "string"},
        "type": {"enum": ["COMPUTE_HOST", "VM", "PROCESS"]},
        "payload": {"type": "object", "additionalProperties": {"type": "string"}},
        "status": {"enum": ["new", "running", "error", "failed", "ignored", "finished"]},
        "failover_segment_uuid": {"type": "string"},
        "message": _TEXT,
        "recovery_workflow_details": {"type": "array", "items": _TASK},
        "created_at": _TIME,
        "updated_at": _TIME_OR_NULL,
        "deleted": {"type": "boolean"},
        "deleted_at": {"type": "null"},
    },
    ["id", "notification_uuid", "type", "status", "payload", "generated_time"],
    extra=True,
)
VMOVE: Schema = obj(
    {
        "id": {"type": "integer"},
        "uuid": {"type": "string"},
        "notification_uuid": {"type": "string"},
        "instance_uuid": {"type": ["string", "null"]},
        "instance_name": {"type": ["string", "null"]},
        "source_host": {"type": "string"},
        "dest_host": {"type": ["string", "null"]},
        "type": {"const": "evacuation"},
        "status": {"enum": ["pending", "ongoing", "succeeded", "failed", "ignored"]},
        "message": _TEXT,
    },
    ["id", "uuid", "notification_uuid", "type", "status"],
    extra=True,
)
_VERSION: Schema = obj(
    {
        "id": {"type": "string"},
        "status": {"type": "string"},
        "links": {"type": "array", "items": {"type": "object"}},
        "media-types": {"type": "array", "items": {"type": "object"}},
        "version": {"type": "string"},
        "min_version": {"type": "string"},
        "updated": {"type": "string"},
    },
    ["id", "status", "links"],
    extra=True,
)

# Request bodies as Masakari's own schemas take them (1.2 adds a segment's "enabled").
SEGMENT_IN: Schema = _wrapped(
    "segment",
    obj(
        {
            "name": _NAME,
            "description": {"type": ["string", "null"], "maxLength": 255},
            "recovery_method": {"enum": RECOVERY_METHODS},
            "service_type": _NAME,
            "enabled": _FLAG,
        },
        ["name", "recovery_method", "service_type"],
    ),
)
SEGMENT_UPDATE: Schema = _wrapped(
    "segment",
    {**SEGMENT_IN["properties"]["segment"], "required": [], "minProperties": 1},
)
HOST_IN: Schema = _wrapped(
    "host",
    obj(
        {
            "name": _NAME,
            "type": {"type": "string", "maxLength": 255, "pattern": "^[a-zA-Z0-9]*$"},
            "control_attributes": {"type": "string"},
            "reserved": _FLAG,
            "on_maintenance": _FLAG,
        },
        ["name", "type", "control_attributes"],
    ),
)
HOST_UPDATE: Schema = _wrapped(
    "host", {**HOST_IN["properties"]["host"], "required": [], "minProperties": 1}
)
NOTIFICATION_IN: Schema = _wrapped(
    "notification",
    obj(
        {
            "type": {"enum": ["COMPUTE_HOST", "VM", "PROCESS"]},
            "hostname": {
                "type": "string",
                "minLength": 1,
                "maxLength": 255,
                "pattern": "^[a-zA-Z0-9-._]*$",
            },
            "generated_time": {"type": "string", "format": "date-time"},
            "payload": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        ["type", "hostname", "generated_time", "payload"],
    ),
)

_WHY = {
    400: "bad input, or a malformed microversion (Masakari's badRequest)",
    401: "no or wrong token (X-Auth-Token or bearer)",
    404: "no such record, or no such path",
    406: "microversion out of range",
    409: "in use by a notification being processed, duplicate, or exists already",
    503: "Nova did not answer",
}


def _query(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def paging(sort_keys: list[str], filters: dict[str, Schema]) -> list[Schema]:
    """Masakari's list parameters: limit, marker, sort_key/sort_dir and the filters."""
    return [
        _query("limit", {"type": "integer", "minimum": 0}),
        _query("marker", {"type": "string"}),
        _query("sort_key", {"enum": sort_keys}),
        _query("sort_dir", {"enum": ["asc", "desc"]}),
        *(_query(name, schema) for name, schema in filters.items()),
    ]


BOOL_QUERY: Schema = {"type": "string", "pattern": _BOOL_TEXT}
VERSION_HEADER: Schema = {
    "name": "OpenStack-API-Version",
    "in": "header",
    "required": False,
    # Any text: a value for another service is ignored (1.0), as Masakari does.
    "description": "instance-ha X.Y (1.0 to 1.3) or latest; none means 1.0",
    "schema": {"type": "string"},
}


def path_params(path: str) -> list[Schema]:
    """The route's path parameters: its handlers read the raw request, so FastAPI does
    not see them."""
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{(\w+)\}", path)
    ]


def operation(
    status: int,
    *,
    answer: Schema | None,
    body: Schema | None = None,
    params: list[Schema] | None = None,
    refusals: tuple[int, ...] = (),
    public: bool = False,
    path: str = "",
    links: dict[str, tuple[str, dict[str, str]]] | None = None,
) -> tuple[dict[int | str, Any], dict[str, Any]]:
    """(responses, openapi_extra) of one route for FastAPI's add_api_route; ``links``
    name the operations its answer leads to (operation id, parameters)."""
    json = "application/json"
    ok: dict[str, Any] = {"description": "Masakari's answer"}
    if answer is not None:
        ok["content"] = {json: {"schema": answer}}
    if links:
        ok["links"] = {
            name: {"operationId": op, "parameters": params} for name, (op, params) in links.items()
        }
    responses: dict[int | str, Any] = {status: ok}
    # 404 everywhere: a path the routes do not match (a newline in an id never reaches
    # them) is Masakari's itemNotFound too.
    codes = (*((400, 404, 406) if public else (400, 401, 404, 406)), *refusals)
    for code in sorted(set(codes)):
        responses[code] = {"description": _WHY[code], "content": {json: {"schema": FAULT}}}
    extra: dict[str, Any] = {"parameters": [*path_params(path), VERSION_HEADER, *(params or [])]}
    if public:
        extra["security"] = []
    if body is not None:
        extra["requestBody"] = {"required": True, "content": {json: {"schema": body}}}
    return responses, extra


VERSIONS: Schema = obj({"choices": {"type": "array", "items": _VERSION}}, ["choices"])
VERSION: Schema = obj({"version": _VERSION}, ["version"])
