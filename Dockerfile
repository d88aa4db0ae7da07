# syntax=docker/dockerfile:1
# Ollama Web backend image. Two stages: `build` turns the source into a virtualenv with the
# package and its dependencies; `runtime` gets only that virtualenv (no source tree, tests,
# pip cache or build tools) and runs as an unprivileged user.
#
#   docker build -t ollama-web .
#   docker run -p 8000:8000 -e SECRET_KEY="$(openssl rand -hex 32)" \
#     -e OLLAMA_URL=http://host.docker.internal:11434 ollama-web

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY src ./src
# A regular (not editable) install: the runtime stage needs nothing from /src. pip also
# byte-compiles, so the unprivileged runtime user never has to write into /opt/venv.
RUN /opt/venv/bin/pip install --no-cache-dir .

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="ollama-web" \
      org.opencontainers.image.description="A secure multi-user web backend for Ollama" \
      org.opencontainers.image.licenses="MIT"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ENVIRONMENT=production \
    PORT=8000 \
    WORKERS=1 \
    DATA_DIR=/app/data \
    LOG_DIR=/app/logs \
    BACKUP_DIR=/app/backups
RUN groupadd --system --gid 10001 ollamaweb \
    && useradd --system --uid 10001 --gid ollamaweb --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin ollamaweb \
    && mkdir -p /app/data /app/logs /app/backups \
    && chown -R ollamaweb:ollamaweb /app \
    && chmod 0750 /app/data /app/logs /app/backups
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
VOLUME ["/app/data", "/app/logs", "/app/backups"]
EXPOSE 8000
# The slim image has no curl: probe liveness with the interpreter that is already there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('PORT', '8000'), timeout=4)"]
# SIGTERM gives running answers SHUTDOWN_GRACE_SECONDS (25 s) to end, then stores them and
# takes the shutdown backup: give `docker stop` 60 s (`--stop-timeout 60`; Compose sets
# stop_grace_period).
STOPSIGNAL SIGTERM
# HOST is forced to all interfaces inside the container; PORT and WORKERS come from the env.
CMD ["ollama-web", "serve", "--host", "0.0.0.0"]
