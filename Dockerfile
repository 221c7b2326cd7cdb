# One image for every Conveyor process; the command picks the role (see docker-compose.yml).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY workers ./workers
COPY tasks ./tasks
COPY api_shim ./api_shim
COPY migrations ./migrations
# var/blobs and var/flower exist owned by conveyor, so the named volumes compose mounts
# there start out writable by it
RUN pip install -e . && useradd --create-home conveyor \
    && mkdir -p var/blobs var/flower && chown -R conveyor var
USER conveyor
