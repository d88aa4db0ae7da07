"""Ollama Web: a lean, secure, self-hosted multi-user web backend for Ollama."""

__version__ = "0.1.0"
