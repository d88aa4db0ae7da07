"""Liveness, readiness and the component health report."""
