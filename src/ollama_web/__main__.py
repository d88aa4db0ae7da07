"""`python -m ollama_web` runs the command-line interface."""

from ollama_web.cli import main

raise SystemExit(main())
