"""Run the emulator standalone: ``python -m ollama_web.emulator --port 11434``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from ollama_web.emulator.config import EmulatorConfig, ModelSpec
from ollama_web.emulator.server import OllamaEmulator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ollama_web.emulator", description="Ollama HTTP API emulator"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434, help="0 picks a free port")
    parser.add_argument(
        "--models",
        default="llama3.2:latest",
        help="comma-separated model names (well-known names get realistic details)",
    )
    parser.add_argument("--tokens-per-second", type=float, default=0.0)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument(
        "--batched-decode",
        action="store_true",
        help="concurrent generations of a model get their tokens at the same decode steps",
    )
    parser.add_argument("--reply", default=None)
    parser.add_argument("--reply-tokens", type=int, default=None)
    parser.add_argument("--thinking", default=None)
    parser.add_argument(
        "--num-parallel", type=int, default=0, help="per model; 0 = unlimited (Ollama: 1)"
    )
    parser.add_argument(
        "--max-queue", type=int, default=0, help="all models; 0 = unlimited (Ollama: 512)"
    )
    parser.add_argument("--pull-delay", type=float, default=0.0)
    parser.add_argument("--split-utf8", action="store_true")
    parser.add_argument("--version", dest="ollama_version", default="0.33.0")
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    names = [n.strip() for n in str(args.models).split(",") if n.strip()]
    return EmulatorConfig(
        models=[ModelSpec.preset(name) for name in names],
        reply=args.reply,
        reply_tokens=args.reply_tokens,
        tokens_per_second=args.tokens_per_second,
        first_token_delay=args.first_token_delay,
        batched_decode=args.batched_decode,
        thinking=args.thinking,
        num_parallel=args.num_parallel,
        max_queue=args.max_queue,
        pull_delay=args.pull_delay,
        split_utf8=args.split_utf8,
        version=args.ollama_version,
    )


async def serve(args: argparse.Namespace) -> None:
    emulator = OllamaEmulator(config_from_args(args), host=args.host, port=args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with emulator:
        print(f"Ollama emulator listening on {emulator.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
