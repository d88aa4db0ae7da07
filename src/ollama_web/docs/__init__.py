"""Offline API docs: Swagger UI and ReDoc from installed packages; no CDN, no inline script."""
