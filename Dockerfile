# One image for every zapflow process; docker-compose.yml picks the process with `command`.
FROM python:3.12.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3.12 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install uv==0.13.8

WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml or uv.lock change.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project

COPY . .
RUN uv sync --frozen --no-dev

# The code stays owned by root (read-only for the service user); only the state dir is writable.
RUN groupadd --system --gid 10001 zapflow \
    && useradd --system --uid 10001 --gid zapflow --home-dir /var/lib/zapflow --create-home \
        --shell /usr/sbin/nologin zapflow
USER zapflow:zapflow

ENV PATH="/app/.venv/bin:${PATH}" \
    ZAPFLOW_STATE_DIR=/var/lib/zapflow

EXPOSE 8000

CMD ["zapflow", "api"]
