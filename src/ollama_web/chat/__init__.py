"""Chat: turns sent to Ollama and streamed back over SSE as durable, re-attachable jobs.

- `schemas`: the request body and Ollama's options; `service`: modes, context, what is stored
  before Ollama is called; `generation`/`registry`: the jobs; `sse`: framing and the event
  log; `responses`: non-streamed answers and replays; `router`: the endpoints; `lifespan`.
"""
