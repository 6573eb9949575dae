"""The OpenAPI 3.1 document of an app: one RPC path per binding and method.

Argument and result schemas come from the methods' type hints through
``msgspec.json.schema_components`` (JSON Schema 2020-12, which OpenAPI 3.1
uses). A hint msgspec cannot describe becomes the empty schema (any value).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from stead._core import __version__
from stead.http.routes import MAX_LIST_LIMIT
from stead.http.signatures import Parameter, Signature

__all__ = ["build_openapi"]

_REF = "#/components/schemas/{name}"
_ERROR_STATUSES = {
    "400": "Malformed JSON, bad arguments or an invalid name",
    "401": "Missing or wrong bearer token",
    "404": "Unknown binding or method",
    "413": "Body over the limit",
    "429": "The object is overloaded; retry after Retry-After seconds",
    "500": "The handler raised",
    "503": (
        "StorageError: storage failed, nothing was acknowledged. "
        "NotStarted: the runtime is not running. "
        "ShuttingDown: the server stopped waiting for the call, which may still complete "
        "or have partly completed: check before retrying a call that is not idempotent"
    ),
}
# No Struct's component can be named so (msgspec uses the class name, or its
# module-qualified name on a clash, and stead defines no Struct named Error).
_ERROR_NAME = "stead.Error"
_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            "required": ["type", "message"],
        }
    },
    "required": ["error"],
}
_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "The object's name (1 to 2048 UTF-8 bytes)",
    "schema": {"type": "string", "minLength": 1},
}


def build_openapi(
    signatures: Mapping[str, Mapping[str, Signature]], *, bearer: bool = False
) -> dict[str, Any]:
    """The document for ``{binding: {method: Signature}}``; with ``bearer``, every
    operation but ``/healthz`` requires the bearer token."""
    hints = [
        hint
        for methods in signatures.values()
        for signature in methods.values()
        for hint in [*(p.hint for p in signature.parameters), signature.result]
    ]
    schema_of, components = _schemas(hints)
    paths: dict[str, Any] = {}
    for binding, methods in sorted(signatures.items()):
        paths[f"/objects/{binding}"] = {"get": _list_operation(binding)}
        for name, signature in sorted(methods.items()):
            path = f"/objects/{binding}/{{name}}/rpc/{name}"
            paths[path] = {"post": _rpc_operation(binding, signature, schema_of)}
    health = _simple_operation("healthz", "Liveness", _HEALTH_SCHEMA)
    paths["/healthz"] = {"get": health}
    components[_ERROR_NAME] = _ERROR_SCHEMA
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "stead", "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }
    if bearer:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
        health["security"] = []  # open
    return document


_HEALTH_SCHEMA = {
    "type": "object",
    "properties": {"status": {"const": "ok"}},
    "required": ["status"],
}


def _schemas(hints: list[Any]) -> tuple[Callable[[Any], Any], dict[str, Any]]:
    """Schemas for every hint in one call (shared components, and names made
    unique: two ``Item`` Structs of two modules stay apart). Hints msgspec
    cannot describe get the empty schema and leave the others in that call."""
    unique = list({id(hint): hint for hint in hints}.values())
    described = [hint for hint in unique if _describable(hint)]
    schemas, components = msgspec.json.schema_components(described, ref_template=_REF)
    table = {id(hint): schema for hint, schema in zip(described, schemas, strict=True)}
    return (lambda hint: table.get(id(hint), {})), dict(components)


def _describable(hint: Any) -> bool:
    try:
        msgspec.json.schema_components([hint], ref_template=_REF)
    except (TypeError, ValueError):
        return False
    return True


def _rpc_operation(
    binding: str, signature: Signature, schema_of: Callable[[Any], Any]
) -> dict[str, Any]:
    return {
        "operationId": f"{binding}.{signature.name}",
        "summary": f"Call {binding}.{signature.name}",
        "tags": [binding],
        "parameters": [_NAME],
        "requestBody": {
            # No body is {"args": [], "kwargs": {}}: fine unless a parameter is required.
            "required": any(p.required for p in signature.parameters),
            "content": {"application/json": {"schema": _body_schema(signature, schema_of)}},
        },
        "responses": {
            "200": _json_response(
                "The method's return value",
                {
                    "type": "object",
                    "properties": {"result": schema_of(signature.result)},
                    "required": ["result"],
                },
            ),
            **_error_responses(),
        },
    }


def _body_schema(signature: Signature, schema_of: Callable[[Any], Any]) -> dict[str, Any]:
    positional = [p for p in signature.parameters if p.positional]
    variadic = [p for p in signature.parameters if p.kind is inspect.Parameter.VAR_POSITIONAL]
    args: dict[str, Any] = {"type": "array"}
    if positional:  # JSON Schema wants a non-empty prefixItems
        args["prefixItems"] = [schema_of(p.hint) for p in positional]
    if variadic:
        args["items"] = schema_of(variadic[0].hint)
    else:
        args["maxItems"] = len(positional)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"args": args, "kwargs": _kwargs_schema(signature.parameters, schema_of)},
        "additionalProperties": False,
    }
    rules = _binding_rules(signature.parameters)
    if rules:
        schema["allOf"] = rules
    return schema


def _binding_rules(parameters: list[Parameter]) -> list[dict[str, Any]]:
    """How ``args`` and ``kwargs`` together must cover the parameters, as Python
    binds them: a required one is given by position or by name, none twice."""
    rules: list[dict[str, Any]] = []
    positional = [p for p in parameters if p.positional]
    for index, parameter in enumerate(positional):
        covers = {"required": ["args"], "properties": {"args": {"minItems": index + 1}}}
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            if parameter.required:
                rules.append(covers)
            continue
        named = {"required": ["kwargs"], "properties": {"kwargs": {"required": [parameter.name]}}}
        if parameter.required:
            rules.append({"anyOf": [covers, named]})
        rules.append({"not": {"allOf": [covers, named]}})  # both: "multiple values"
    keyword_only = inspect.Parameter.KEYWORD_ONLY
    required = [p.name for p in parameters if p.kind is keyword_only and p.required]
    if required:
        rules.append({"required": ["kwargs"], "properties": {"kwargs": {"required": required}}})
    return rules


def _kwargs_schema(parameters: list[Parameter], schema_of: Callable[[Any], Any]) -> dict[str, Any]:
    named = [p for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    keyword = [p for p in named if p.kind is not inspect.Parameter.VAR_KEYWORD]
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            p.name: schema_of(p.hint) for p in keyword if p.kind.name != "POSITIONAL_ONLY"
        },
    }
    var_keyword = [p for p in named if p.kind is inspect.Parameter.VAR_KEYWORD]
    schema["additionalProperties"] = schema_of(var_keyword[0].hint) if var_keyword else False
    return schema


def _list_operation(binding: str) -> dict[str, Any]:
    id_entry = {
        "type": "object",
        "properties": {"id": {"type": "string"}, "name": {"type": ["string", "null"]}},
        "required": ["id", "name"],
    }
    listing = {
        "type": "object",
        "properties": {
            "ids": {"type": "array", "items": id_entry},
            "next": {"type": ["string", "null"]},
        },
        "required": ["ids", "next"],
    }
    # "__list__": no RPC method can have that name (a method "list" is BINDING.list).
    operation = _simple_operation(f"{binding}.__list__", f"List {binding} objects", listing)
    limit = {"type": "integer", "minimum": 0, "maximum": MAX_LIST_LIMIT}
    operation["parameters"] = [
        {"name": "limit", "in": "query", "schema": limit},
        {"name": "after", "in": "query", "schema": {"type": "string"}},
    ]
    operation["tags"] = [binding]
    return operation


def _simple_operation(operation_id: str, summary: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "responses": {"200": _json_response(summary, schema), **_error_responses()},
    }


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error_responses() -> dict[str, Any]:
    error = {"$ref": _REF.format(name=_ERROR_NAME)}
    return {status: _json_response(text, error) for status, text in _ERROR_STATUSES.items()}
