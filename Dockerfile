# One image for every Conveyor process. docker-compose.yml (or the Procfile) picks the command:
# `conveyor web`, `dramatiq conveyor.workers.<pool> ...`, `conveyor db upgrade`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install from a scratch copy of the source, then drop it: the processes run the installed
# package, and nothing in the working directory can shadow it on sys.path.
COPY pyproject.toml setup.cfg README.md /tmp/conveyor-src/
COPY conveyor /tmp/conveyor-src/conveyor
RUN pip install /tmp/conveyor-src \
 && rm -rf /tmp/conveyor-src \
 && python -c "from conveyor.models.migrate import MIGRATIONS as m; \
assert (m / 'env.py').is_file() and any((m / 'versions').glob('*.py')), \
'the installed package lacks its migrations (setup.cfg packaging)'"

RUN groupadd --system --gid 10001 conveyor \
 && useradd --system --uid 10001 --gid conveyor --home-dir /app --create-home \
        --shell /usr/sbin/nologin conveyor
WORKDIR /app
USER conveyor

EXPOSE 8000
CMD ["conveyor", "web"]
