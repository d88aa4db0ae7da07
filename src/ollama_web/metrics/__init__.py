"""Request and chat metrics: JSON at /metrics, Prometheus at /metrics/prometheus.

- `chat`: the hooks the chat engine calls (`generation_started`, `generation_finished`,
  `tokens_relayed`, `time_to_first_token`, `upstream_error`).
- `middleware`: `MetricsMiddleware` (pure ASGI; route templates, slow-request log).
- `http`: the in-process statistics; `prometheus`: the prometheus-client side;
  `environment`: PROMETHEUS_MULTIPROC_DIR from the settings, before prometheus-client loads.
- `router`, `dependencies` (admin or METRICS_TOKEN), `lifespan`.
"""
