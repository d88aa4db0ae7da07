"""API keys: many named keys per user, shown once, stored as sha256, rotated with grace."""
