"""Just enough JSON Schema to check a response body against the OpenAPI document's schema.

`$ref` (into the document), `anyOf`/`oneOf`/`allOf`, `type`, `const`, `enum`, `properties`,
`required`, `additionalProperties` and `items` — what pydantic emits for our models. A schema
using any other keyword that constrains values fails loudly, so a check never passes by
ignoring what it does not understand.
"""

from __future__ import annotations

from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}
_ANNOTATIONS = {"title", "description", "default", "examples", "format", "$defs"}
_UNDERSTOOD = {
    "$ref",
    "anyOf",
    "oneOf",
    "allOf",
    "type",
    "const",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "items",
}


def _resolve(reference: str, document: dict[str, Any]) -> dict[str, Any]:
    node: Any = document
    for part in reference.removeprefix("#/").split("/"):
        node = node[part]
    assert isinstance(node, dict), reference
    return node


def _is(value: Any, type_name: str) -> bool:
    if isinstance(value, bool) and type_name in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[type_name])


def problems(
    value: Any, schema: dict[str, Any], document: dict[str, Any], at: str = "$"
) -> list[str]:
    """Why `value` does not match `schema` (empty when it does)."""
    unknown = set(schema) - _UNDERSTOOD - _ANNOTATIONS
    assert not unknown, f"{at}: the checker does not understand {sorted(unknown)}"
    if "$ref" in schema:
        return problems(value, _resolve(schema["$ref"], document), document, at)
    found: list[str] = []
    for keyword in ("anyOf", "oneOf"):
        if keyword in schema and all(problems(value, s, document, at) for s in schema[keyword]):
            found.append(f"{at}: matches no branch of {keyword}")
    for sub in schema.get("allOf", []):
        found += problems(value, sub, document, at)
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_is(value, name) for name in names):
            return [*found, f"{at}: {value!r} is not of type {types}"]
    if "const" in schema and value != schema["const"]:
        found.append(f"{at}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{at}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        found += _object_problems(value, schema, document, at)
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += problems(item, schema["items"], document, f"{at}[{index}]")
    return found


def _object_problems(
    value: dict[str, Any], schema: dict[str, Any], document: dict[str, Any], at: str
) -> list[str]:
    properties: dict[str, Any] = schema.get("properties", {})
    found = [
        f"{at}: {name!r} is missing" for name in schema.get("required", []) if name not in value
    ]
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            found += problems(item, properties[name], document, f"{at}.{name}")
        elif extra is False:
            found.append(f"{at}: {name!r} is not allowed")
        elif isinstance(extra, dict):
            found += problems(item, extra, document, f"{at}.{name}")
    return found
