"""`/info`: what this server is and which features are on (no secrets)."""
