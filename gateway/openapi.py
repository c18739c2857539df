"""The gateway's OpenAPI document: FastAPI's, plus the limits the HTTP edge puts on every body.

`JsonBodies` refuses any JSON body holding a value the mesh cannot carry (schemas/encodable.py),
wherever it sits, even in a field a route ignores; the document says so: every integer is
bounded to 64 bits and every open object's extra values are `JsonValue`s.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from agentmesh.gateway.errors import ERROR_BODIES, api_of

INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what msgpack carries (schemas/encodable.py)
JSON_VALUE = "JsonValue"
_REF = {"$ref": f"#/components/schemas/{JSON_VALUE}"}
_JSON_VALUE_SCHEMA = {
    "description": "Any JSON value the mesh can carry: integers within -2^63 .. 2^64-1, no lone "
    "surrogates in strings, nesting at most 100 deep (else 400 INVALID_MESSAGE).",
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "string"},
        {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "array", "items": _REF},
        {"type": "object", "additionalProperties": _REF},
    ],
}
# Keywords that make a schema more than "any value".
_ASSERTIONS = frozenset(
    "type $ref anyOf oneOf allOf not const enum properties items additionalProperties".split()
)
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMAS = ("items", "additionalProperties", "not", "contains", "propertyNames")


def install(app: FastAPI) -> None:
    """Serve FastAPI's document with the edge's limits added (once: FastAPI caches it)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        document = generate()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        if JSON_VALUE not in schemas:
            _own_validation_errors(document)
            for schema in _roots(document):
                _limit(schema)
            schemas[JSON_VALUE] = _JSON_VALUE_SCHEMA
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a JSON body a route reads itself (and checks with `model`).

    The model's schema is inlined: its `$defs` would not resolve inside the document.
    """
    schema = inline_schema(model)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON Schema with its `$defs` inlined, to place anywhere in the document."""
    schema = model.model_json_schema()
    return _inline(schema, schema.pop("$defs", {}))


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return _inline({**defs[ref.removeprefix("#/$defs/")], **rest}, defs)
    # A discriminator's mapping names $defs too; the oneOf's `const`s discriminate anyway.
    return {k: _inline(v, defs) for k, v in node.items() if k != "discriminator"}


def _own_validation_errors(document: dict[str, Any]) -> None:
    """FastAPI documents its own 422 body; errors.install answers the route's error format."""
    for path, operations in document.get("paths", {}).items():
        body = ERROR_BODIES[api_of(path)].__name__
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            if response is not None and "HTTPValidationError" in str(response):
                response["description"] = "INVALID_MESSAGE: the request does not match its schema."
                schema = {"$ref": f"#/components/schemas/{body}"}
                response["content"] = {"application/json": {"schema": schema}}
    for unused in ("HTTPValidationError", "ValidationError"):
        document["components"]["schemas"].pop(unused, None)


def _roots(document: dict[str, Any]) -> list[dict[str, Any]]:
    roots = list(document["components"]["schemas"].values())
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            roots += [p["schema"] for p in operation.get("parameters", []) if "schema" in p]
            contents = [operation.get("requestBody", {}).get("content", {})]
            contents += [r.get("content", {}) for r in operation.get("responses", {}).values()]
            roots += [
                c["schema"] for content in contents for c in content.values() if "schema" in c
            ]
    return roots


def _limit(node: Any) -> None:
    if not isinstance(node, dict):
        return
    if not _ASSERTIONS & node.keys():
        node.update(_REF)  # any value: any value the mesh can carry
        return
    if node.get("type") == "integer":
        node.setdefault("minimum", INT_MIN)
        node.setdefault("maximum", INT_MAX)
    if node.get("type") == "object" or "properties" in node:
        if node.get("additionalProperties", True) is True:
            node["additionalProperties"] = dict(_REF)
    if node.get("type") == "array" and "items" not in node:
        node["items"] = dict(_REF)
    for key in _SCHEMA_MAPS:
        for sub in node.get(key, {}).values():
            _limit(sub)
    for key in _SCHEMA_LISTS:
        for sub in node.get(key, []):
            _limit(sub)
    for key in _SCHEMAS:
        _limit(node.get(key))
