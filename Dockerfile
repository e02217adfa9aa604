# One image for every fedcredit organisation; the command picks the role.
# Built by `make image` (deploy/docker/build.sh) on fedcredit-base, a debootstrapped
# Debian imported with `docker import`: nothing is pulled from a registry. No `# syntax=`
# line on purpose: that would pull a frontend image; the daemon's own BuildKit reads this.
ARG BASE=fedcredit-base:latest

# --- build: a virtualenv with fedcredit and its dependencies, installed from wheels -------
FROM ${BASE} AS build
ENV PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/fedcredit
WORKDIR /src
# The dependencies first, as one build argument (deploy/docker/build.sh reads them from
# pyproject.toml): this layer is rebuilt only when they change, not on every edit. The
# host's pip settings (index, extra indexes, certificate bundle) arrive as build secrets
# (deploy/docker/pip-settings.sh writes them): nothing about the host is baked in.
# --only-binary: every dependency is a wheel (no compiler in either stage).
ARG DEPENDENCIES
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=pipcert \
    test -n "$DEPENDENCIES" && printf '%s\n' "$DEPENDENCIES" > /tmp/requirements.txt \
    && PIP_CONFIG_FILE=/run/secrets/pipconf /opt/fedcredit/bin/pip install --only-binary=:all: \
        -r /tmp/requirements.txt
# The source: every top-level package the fedcredit/ links name (.dockerignore keeps
# tests, benchmarks, the virtualenv and local state out of the build context).
COPY . ./
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=pipcert \
    PIP_CONFIG_FILE=/run/secrets/pipconf /opt/fedcredit/bin/pip install --no-deps . \
    && /opt/fedcredit/bin/fedcredit --help >/dev/null

# --- runtime: the base, the virtualenv and a non-root user; no compiler, no pip cache -----
FROM ${BASE} AS runtime
RUN echo 'fedcredit:x:10001:10001:fedcredit:/srv:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'fedcredit:x:10001:' >> /etc/group \
    && mkdir -p /srv /data /etc/fedcredit \
    && chown 10001:10001 /srv /data
COPY --from=build /opt/fedcredit /opt/fedcredit
ENV PATH=/opt/fedcredit/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 FEDCREDIT_CONFIG=/etc/fedcredit/deployment.toml
USER 10001:10001
WORKDIR /srv
# The service, and the organisation whose certificate asks, come from the container's
# environment (FEDCREDIT_SERVICE, FEDCREDIT_ORG); compose files set both.
HEALTHCHECK --interval=30s --timeout=30s --start-period=120s --retries=3 \
    CMD ["fedcredit", "operator", "probe"]
ENTRYPOINT ["/usr/bin/tini", "--", "fedcredit"]
CMD ["--help"]

# --- postgres: Debian's PostgreSQL for the platform's stores ------------------------------
FROM ${BASE} AS postgres
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postgresql-15 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && mkdir -p /var/lib/postgresql/data /run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /run/postgresql
COPY deploy/docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
USER postgres
ENV PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin PGDATA=/var/lib/postgresql/data
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=5 \
    CMD ["sh", "-c", "pg_isready -q -h 127.0.0.1 -p \"${PGPORT:-5432}\""]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/postgres-entrypoint"]
