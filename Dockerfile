# The decision service as a container image: the wheel built from this checkout,
# installed with its dependencies from the package index into a virtualenv, run as
# a user of its own. `make image` builds it (docker or podman).
#
#   docker run -p 8000:8000 --env-file risk-engine.env -v risk-engine-var:/var/lib/risk-engine/var risk-engine
#
# API keys are required (RISK_ENGINE_API_KEY_<NAME>, see README, Operations): the
# service binds 0.0.0.0 here, and `--no-auth` is refused off loopback.

FROM python:3.11-slim AS build
# The wheel carries the decision core compiled by mypyc (setup.py): a C compiler here only.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY risk_engine ./risk_engine
RUN python -m pip wheel --no-deps --no-cache-dir -w /dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/risk-engine/bin:$PATH \
    NUMBA_CACHE_DIR=/var/cache/risk-engine/numba
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/risk-engine --shell /usr/sbin/nologin risk-engine \
 && install -d -o risk-engine -g risk-engine -m 0700 /var/lib/risk-engine /var/lib/risk-engine/var \
 && install -d -o risk-engine -g risk-engine -m 0700 /var/cache/risk-engine
COPY --from=build /dist/ /tmp/dist/
RUN python -m venv /opt/risk-engine \
 && /opt/risk-engine/bin/pip install --no-cache-dir /tmp/dist/*.whl \
 && rm -rf /tmp/dist
USER 10001:10001
WORKDIR /var/lib/risk-engine
# The site-packages directory is not the service user's to write, so numba keeps the
# compiled scoring kernels in NUMBA_CACHE_DIR: compiled here once, loaded at each start
# (numba recompiles, and caches again, on a host whose CPU differs from the builder's).
RUN python -c "from risk_engine.model.artifact import default_model_path as p, load_artifact as l; l(p())"
# var/: the SQLite profiles and decision log, the audit and feedback logs, generated keys.
VOLUME ["/var/lib/risk-engine/var"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["risk-engine"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
