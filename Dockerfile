# One image for every rolecall process; docker-compose.yml picks the command:
#   rolecall worker          the Temporal worker (default)
#   python -m slack_app      the Slack app (HTTP on 3000, or Socket Mode)
#   rolecall setup           one-shot: register the search attributes
# The policy file is mounted at /etc/rolecall/rolecall.toml (ROLECALL_CONFIG).

# ---- build: a wheel of rolecall itself (no dev or demo extras) -------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- runtime --------------------------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ROLECALL_CONFIG=/etc/rolecall/rolecall.toml

RUN groupadd --system --gid 10001 rolecall \
 && useradd --system --uid 10001 --gid rolecall --home-dir /home/rolecall --create-home \
        --shell /usr/sbin/nologin rolecall \
 && mkdir -p /etc/rolecall

# Dependencies come from PyPI (psycopg[binary] and temporalio ship manylinux wheels: no
# compiler in the image); the wheel built above installs the console script `rolecall`.
COPY --from=build /wheels /tmp/wheels
RUN pip install /tmp/wheels/*.whl && rm -rf /tmp/wheels
COPY rolecall.example.toml /etc/rolecall/rolecall.example.toml

USER rolecall
WORKDIR /home/rolecall
# Worker metrics (when ROLECALL_METRICS_BIND=0.0.0.0:9464) and the Slack app's HTTP port.
EXPOSE 9464 3000
# Health checks live in docker-compose.yml: they differ per command.
CMD ["rolecall", "worker"]
