#!/usr/bin/env python3
"""Take a database backup now (the same as `ollama-web backup`; pass --list or --verify NAME)."""

import sys

from ollama_web.cli import main

if __name__ == "__main__":
    sys.exit(main(["backup", *sys.argv[1:]]))
