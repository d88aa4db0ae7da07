"""Cross-cutting building blocks: settings, database, errors, logging, security."""
