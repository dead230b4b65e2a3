# One image for every Flywheel process (api, worker, beat, gateway); the command picks the role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 flywheel
WORKDIR /srv/flywheel

COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
RUN pip install -e . && mkdir -p /var/lib/flywheel && chown flywheel /var/lib/flywheel

USER flywheel
EXPOSE 8000
CMD ["flywheel", "api"]
