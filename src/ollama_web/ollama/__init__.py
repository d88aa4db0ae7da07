"""The Ollama gateway: one pooled HTTP client, several nodes, routing, failover, and the
translation of every upstream failure into our own errors (see `errors`).

Entry point for other domains: `ollama_web.ollama.dependencies.GatewayDep` (an
`ollama_web.ollama.gateway.OllamaGateway`).
"""
