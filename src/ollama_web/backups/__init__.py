"""Database backups and restore.

- `DatabaseBackup` (`service`): take, list, prune, verify and restore backups.
- `names`, `locks`, `sqlite`, `postgres`: file names, flock coordination, the two engines.
- `restore`: the checked restore used by `ollama-web restore` (command line only).
- `runtime`, `lifespan`: automatic backups inside the server; `router`: `/backup` routes;
  `cli`: `ollama-web backup` and `ollama-web restore`.
"""

from ollama_web.backups.service import DatabaseBackup

__all__ = ["DatabaseBackup"]
