"""The `/api/models` routes: listing, node tests, details, running models, pull, delete."""
