"""A faithful Ollama HTTP API emulator ("the double") for tests and benchmarks."""

from ollama_web.emulator.config import EmulatorConfig, ModelSpec
from ollama_web.emulator.server import OllamaEmulator, RecordedRequest

__all__ = ["EmulatorConfig", "ModelSpec", "OllamaEmulator", "RecordedRequest"]
