"""A battery of hostile payloads sent to every operation in the OpenAPI schema that takes
input: the answer is a structured error or verbatim storage — never a 500.

Built from the app's own OpenAPI document, so it covers every route any domain adds. It runs
authenticated as an administrator (API key) so the requests reach the handlers, on SQLite
and on PostgreSQL (NUL bytes and unpaired surrogates are where the two differ).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI

from ollama_web.db.base import new_id
from tests.fixtures.auth import TestUser, UserFactory

STRINGS: dict[str, str] = {
    "sql injection": "' OR '1'='1'; DROP TABLE users; --",
    "xss": "<script>alert(1)</script><img src=x onerror=alert(1)>",
    "traversal": "../../../../etc/passwd",
    "encoded traversal": "..%2F..%2F..%2Fetc%2Fpasswd",
    "null byte": "abc\x00def",
    "unpaired surrogate": "bad\ud800text",
    "control and bidi": "a\x1b[31m\u202egnp.exe\r\n",
    "format strings": "%s%n{0}${jndi:ldap://x}",
    "oversized": "A" * 100_000,
}
# URLs cannot be 100 kB long (clients refuse); 4 kB is still far past any sane id.
URL_STRINGS = {**STRINGS, "oversized": "A" * 4000}
WRONG_TYPES: dict[str, Any] = {
    "list": ["x"],
    "object": {"$ne": None},
    "null": None,
    "huge number": 10**40,
    "boolean": True,
}
# Fields whose value must come back exactly as sent when the request succeeds.
VERBATIM_FIELDS = frozenset({"title", "content", "system_prompt", "name"})
SKIPPED_PREFIXES = ("/health", "/docs", "/redoc", "/openapi.json", "/metrics")
ALLOWED_5XX = frozenset({"OLLAMA_UNAVAILABLE", "OLLAMA_TIMEOUT", "OLLAMA_BUSY", "OLLAMA_ERROR"})
# The codes of an HTTPException no handler gave a contract code (e.g. FastAPI's "There was an
# error parsing the body").
FRAMEWORK_CODES = frozenset({"BAD_REQUEST", "HTTP_ERROR"})


@dataclass
class Operation:
    method: str
    path: str
    path_params: list[str]
    query_params: list[dict[str, Any]]
    body_schema: dict[str, Any] | None
    body_properties: dict[str, dict[str, Any]] = field(default_factory=dict)


class SchemaSampler:
    """Builds plausible values from OpenAPI schemas (enough to reach the handlers)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.components: dict[str, Any] = document.get("components", {}).get("schemas", {})

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        for _ in range(20):
            if "$ref" in schema:
                schema = self.components[schema["$ref"].rsplit("/", 1)[1]]
            elif "anyOf" in schema or "oneOf" in schema:
                options = schema.get("anyOf") or schema.get("oneOf") or []
                usable = [option for option in options if option.get("type") != "null"]
                schema = usable[0] if usable else {}
            elif "allOf" in schema:
                merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
                for part in schema["allOf"]:
                    part = self.resolve(part)
                    merged["properties"].update(part.get("properties", {}))
                    merged["required"] += part.get("required", [])
                schema = merged
            else:
                return schema
        return schema

    def sample(self, schema: dict[str, Any], depth: int = 0) -> Any:
        schema = self.resolve(schema)
        if "enum" in schema:
            return schema["enum"][0]
        if "const" in schema:
            return schema["const"]
        if "default" in schema and schema["default"] is not None:
            return schema["default"]
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            if depth > 4:
                return {}
            properties = schema.get("properties", {})
            return {
                name: self.sample(sub, depth + 1)
                for name, sub in properties.items()
                if name in schema.get("required", [])
            }
        samples: dict[str, Any] = {"integer": 1, "number": 1.0, "boolean": False, "array": []}
        if kind in samples:
            return samples[kind]
        length = max(1, int(schema.get("minLength", 1)))
        return "x" * length


def operations(document: dict[str, Any]) -> list[Operation]:
    found = []
    for path, methods in document["paths"].items():
        if path.startswith(SKIPPED_PREFIXES):
            continue
        for method, spec in methods.items():
            parameters = spec.get("parameters", [])
            body = spec.get("requestBody", {}).get("content", {}).get("application/json")
            path_params = [p["name"] for p in parameters if p["in"] == "path"]
            query_params = [p for p in parameters if p["in"] == "query"]
            if not parameters and body is None:
                continue
            found.append(
                Operation(method.upper(), path, path_params, query_params, body and body["schema"])
            )
    return found


@dataclass
class Case:
    label: str
    method: str
    url: str
    content: bytes | None
    sent: dict[str, Any] | None = None
    content_type: str = "application/json"
    # When given, the request must be refused with one of these codes.
    refusals: frozenset[str] = frozenset()


def _url(operation: Operation, path_values: dict[str, str], query: dict[str, str]) -> str:
    url = operation.path
    for name in operation.path_params:
        url = url.replace("{" + name + "}", _quote(path_values[name]))
    if query:
        url += "?" + "&".join(f"{quote(k)}={_quote(v)}" for k, v in query.items())
    return url


def _quote(value: str) -> str:
    """Percent-encode everything, unpaired surrogates included (as raw invalid UTF-8)."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def _encode(body: Any) -> bytes:
    return json.dumps(body).encode()  # ASCII escapes carry NULs and surrogates intact


def cases(operation: Operation, sampler: SchemaSampler, real_ids: dict[str, str]) -> Iterator[Case]:
    ids = {
        name: real_ids.get(name, new_id()) if operation.method != "DELETE" else new_id()
        for name in operation.path_params
    }
    base_body = sampler.sample(operation.body_schema) if operation.body_schema else None
    content = _encode(base_body) if operation.body_schema else None
    for name in operation.path_params:
        for label, payload in URL_STRINGS.items():
            url = _url(operation, {**ids, name: payload}, {})
            yield Case(f"path {name}: {label}", operation.method, url, content)
    for parameter in operation.query_params:
        for label, payload in URL_STRINGS.items():
            url = _url(operation, ids, {parameter["name"]: payload})
            yield Case(f"query {parameter['name']}: {label}", operation.method, url, content)
    if operation.body_schema is None:
        return
    url = _url(operation, ids, {})
    schema = sampler.resolve(operation.body_schema)
    for name in schema.get("properties", {}):
        for label, payload in {**STRINGS, **WRONG_TYPES}.items():
            body = {**(base_body if isinstance(base_body, dict) else {}), name: payload}
            yield Case(f"body {name}: {label}", operation.method, url, _encode(body), body)
    for label, raw in {
        "array body": b"[]",
        "string body": b'"x"',
        "null body": b"null",
    }.items():
        yield Case(f"body: {label}", operation.method, url, raw)
    # The body is read before anything else is looked at (even an unknown id in the path).
    invalid_json = frozenset({"INVALID_JSON"})
    for label, raw in {
        "not json": b"{'nope",
        "deep nesting": b"[" * 5000 + b"]" * 5000,
        "not UTF-8": b'{"x": "caf\xe9"}',
    }.items():
        yield Case(f"body: {label}", operation.method, url, raw, refusals=invalid_json)
    # A payload error, so after the route's dependencies (a made-up id's 404 comes first).
    not_json = {"UNSUPPORTED_MEDIA_TYPE", *(["NOT_FOUND"] if operation.path_params else [])}
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        yield Case(
            f"body sent as {content_type}",
            operation.method,
            url,
            content,
            content_type=content_type,
            refusals=frozenset(not_json),
        )


def check(case: Case, response: httpx.Response) -> str | None:
    """A description of what is wrong with the answer, or None."""
    status = response.status_code
    if status >= 400:
        try:
            body = response.json()
        except ValueError:
            return f"{status} without a JSON error body"
        if set(body) != {"error", "message", "details", "request_id"}:
            return f"{status} unstructured error {body!r:.200}"
        if status >= 500 and body["error"] not in ALLOWED_5XX:
            return f"{status} {body['error']}: {body['message']}"
        if body["error"] in FRAMEWORK_CODES:
            return f"{status} {body['error']} (no contract code): {body['message']}"
        if case.refusals and body["error"] not in case.refusals:
            return f"{status} {body['error']}, expected {sorted(case.refusals)}"
        return None
    if case.refusals:
        return f"{status}, expected a refusal ({sorted(case.refusals)})"
    if "text/event-stream" in response.headers.get("content-type", ""):
        return "INTERNAL_ERROR event in the stream" if "INTERNAL_ERROR" in response.text else None
    if case.sent and response.headers.get("content-type", "").startswith("application/json"):
        echoed = response.json()
        for name, value in case.sent.items():
            if (
                name in VERBATIM_FIELDS
                and isinstance(value, str)
                and value.isprintable()
                and isinstance(echoed, dict)
                and name in echoed
                and echoed[name] != value
            ):
                return f"{name} stored as {echoed[name]!r:.80} instead of verbatim"
    return None


async def _real_ids(client: httpx.AsyncClient, victim: TestUser) -> dict[str, str]:
    ids = {"user_id": victim.id}
    created = await client.post("/api/conversations", json={"title": "battery"})
    if created.status_code == 201:
        ids["conversation_id"] = created.json()["id"]
    return ids


async def test_hostile_payloads_never_cause_a_500(
    app: FastAPI, admin_user: TestUser, user_factory: UserFactory
) -> None:
    victim = await user_factory()
    document = app.openapi()
    sampler = SchemaSampler(document)
    found = operations(document)
    assert len(found) >= 5, "the schema lists the operations that take input"
    failures: list[str] = []
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", headers=admin_user.headers, timeout=30
    ) as client:
        real_ids = await _real_ids(client, victim)
        sent = 0
        for operation in found:
            for case in cases(operation, sampler, real_ids):
                response = await client.request(
                    case.method,
                    case.url,
                    content=case.content,
                    headers={"content-type": case.content_type} if case.content else {},
                )
                sent += 1
                problem = check(case, response)
                if problem:
                    failures.append(f"{case.method} {operation.path} [{case.label}] -> {problem}")
        alive = await client.get("/health/ready")
    assert alive.status_code == 200, "the server survived the battery"
    assert sent > 100
    assert not failures, "\n".join(failures[:40]) + f"\n({len(failures)} problems)"
