"""Request rate limits on the `limits` library (moving window), shared through Redis, or
through a file of DATA_DIR by the workers of one host.

- `limiter`: groups ("auth", "chat", "default"), `group_for`, `rate_limit_group`,
  `RateLimiter`, `RateLimitDecision`.
- `dependencies`: `enforce_rate_limit` / `RateLimitDep` (installed app-wide),
  `rate_limit_storage(app)` (the shared `limits` storage for other limiters).
- `middleware`: `RateLimitHeadersMiddleware` (client address, X-RateLimit-* headers).
- `storage`: `FallbackStorage` (Redis via redis-py asyncio; the host's file with several
  workers, or memory, without it or while it is unreachable).
- `lifespan`: `rate_limit_lifespan` builds them and adds `redis` to /health.
"""
