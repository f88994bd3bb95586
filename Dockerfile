# syntax=docker/dockerfile:1
# modelgate as a container: the package and its runtime dependencies only (no test extras), run as a non-root user.
# Build: docker build -t modelgate .   (optional extras, e.g. traces: --build-arg EXTRAS="[otel]")
# Checked without a Docker engine by tests/test_deploy.py; see README "Deploy with Docker".

# --- build: every dependency as a wheel, so the final image needs no compiler and no pip cache -------------------
FROM python:3.11-slim AS build
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".${EXTRAS}"

# --- run ----------------------------------------------------------------------------------------------------------
FROM python:3.11-slim
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    XDG_STATE_HOME=/var/lib/modelgate
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "modelgate${EXTRAS}" \
    && useradd --system --uid 10001 --home-dir /var/lib/modelgate --create-home --shell /usr/sbin/nologin modelgate
# The default SQLite ledger lives under XDG_STATE_HOME (modelgate/ledger.sqlite3); compose uses PostgreSQL instead.
VOLUME ["/var/lib/modelgate"]
USER modelgate
WORKDIR /var/lib/modelgate
EXPOSE 8000
# /ready: the catalogue is loaded and, with MODELGATE_REDIS_URL, Redis answers. The slim image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4).status != 200)"]
# SIGTERM (docker stop) drains running replies for MODELGATE_GRACEFUL_TIMEOUT seconds (default 30).
ENTRYPOINT ["modelgate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
