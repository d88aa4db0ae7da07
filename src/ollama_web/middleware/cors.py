"""Starlette's CORS (pure ASGI), with a refused preflight answered in the error envelope.

Starlette refuses a preflight with 400 text/plain "Disallowed CORS origin". Here it is 403
FORBIDDEN in the contract's envelope: `details.refused` names what was refused (`origin`,
`method`, `headers`, `private_network`) and the refused values follow, with the request id
as on every other error. Allowed preflights and all other requests are Starlette's, as is
the decision (the refusal's CORS headers, e.g. `Vary`, are kept).
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.middleware import cors
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ollama_web.core.errors import error_response

_BODY_HEADERS = frozenset({"content-length", "content-type"})


class CORSMiddleware(cors.CORSMiddleware):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            if "origin" in headers and "access-control-request-method" in headers:
                response = self.preflight_response(request_headers=headers)
                if response.status_code >= 400:
                    response = self._refusal(scope, headers, response)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _refused(self, headers: Headers) -> dict[str, Any]:
        """What the preflight asked for that is not allowed."""
        found: dict[str, Any] = {}
        origin = headers["origin"]
        if not self.is_allowed_origin(origin=origin):
            found["origin"] = origin
        method = headers["access-control-request-method"]
        if method not in self.allow_methods:
            found["method"] = method
        requested = headers.get("access-control-request-headers")
        if requested is not None and not self.allow_all_headers:
            names = [name.strip() for name in requested.lower().split(",")]
            refused_names = [name for name in names if name not in self.allow_headers]
            if refused_names:
                found["headers"] = refused_names
        # Starlette versions that predate Private Network Access never refuse it.
        if "access-control-request-private-network" in headers and not getattr(
            self, "allow_private_network", True
        ):
            found["private_network"] = True
        return found

    def _refusal(self, scope: Scope, headers: Headers, refused: Response) -> Response:
        found = self._refused(headers)
        what = ", ".join(found) or "request"
        kept = {
            name: value
            for name, value in refused.headers.items()
            if name.lower() not in _BODY_HEADERS
        }
        return error_response(
            scope,
            403,
            "FORBIDDEN",
            f"CORS preflight refused: {what} not allowed.",
            {"refused": list(found), **found},
            kept,
        )
