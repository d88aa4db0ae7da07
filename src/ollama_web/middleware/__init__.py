"""Pure ASGI middleware (no BaseHTTPMiddleware: it breaks streaming and cancellation)."""
