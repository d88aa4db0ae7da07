"""The floor under `POST /api/chat/stream`: the thinnest FastAPI app that relays one chat.

Used by `bench/streaming.py --only floor`. Same stack as the real server (uvicorn, FastAPI, a
pydantic body, httpx over our upstream transport, SSE frames with ids), and nothing else: no
authentication, no database, no middleware, no title, no event log. What the real server
spends above this is the cost of what it does for the user; what this spends is the
framework's.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.responses import StreamingResponse

from ollama_web.ollama.http11 import Http11Transport

OLLAMA = os.environ["OLLAMA_URL"].rstrip("/")
client = httpx.AsyncClient(
    transport=Http11Transport(httpx.Limits(max_connections=1000), httpx.create_ssl_context)
)
app = FastAPI()


class Chat(BaseModel):
    model: str
    content: str


@app.post("/api/chat/stream")
async def chat_stream(body: Chat) -> StreamingResponse:
    request = {"model": body.model, "messages": [{"role": "user", "content": body.content}]}

    async def events() -> AsyncIterator[bytes]:
        event_id = 0
        async with client.stream("POST", OLLAMA + "/api/chat", json=request) as response:
            async for line in response.aiter_lines():
                chunk = json.loads(line)
                event_id += 1
                if chunk.get("done"):
                    yield f"id: {event_id}\nevent: done\ndata: {line}\n\n".encode()
                else:
                    text = json.dumps(chunk["message"]["content"])
                    yield f'id: {event_id}\nevent: token\ndata: {{"content":{text}}}\n\n'.encode()

    return StreamingResponse(events(), media_type="text/event-stream")
