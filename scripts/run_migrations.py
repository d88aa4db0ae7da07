#!/usr/bin/env python3
"""Run database migrations (the same as `ollama-web migrate`; pass --status to only report)."""

import sys

from ollama_web.cli import main

if __name__ == "__main__":
    sys.exit(main(["migrate", *sys.argv[1:]]))
