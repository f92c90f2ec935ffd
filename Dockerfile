# syntax=docker/dockerfile:1
# Kein Shopstream: build a wheel, install it (not editable) into a slim runtime image,
# run as an unprivileged user. Media needs UDP: publish ICE_PORT_RANGE as UDP ports and
# set ICE_ANNOUNCED_ADDRESSES to the address clients reach (see README, "Deploying").

# --- build: our wheel and a wheel of every dependency ------------------------------------
FROM python:3.11-slim AS build
WORKDIR /src
# Only the package sources: .dockerignore keeps .venv, var/ (secrets, databases) and .git out.
COPY pyproject.toml README.md ./
COPY server ./server
COPY signaling ./signaling
COPY media ./media
COPY commerce ./commerce
COPY benchmarks ./benchmarks
COPY sql ./sql
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime -------------------------------------------------------------------------------
FROM python:3.11-slim AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin shopstream \
    && install -d -o shopstream -g shopstream -m 0700 /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels kein-shopstream \
    && rm -rf /wheels
USER shopstream
WORKDIR /data
ENV PYTHONUNBUFFERED=1 \
    SHOPSTREAM_HOST=0.0.0.0 \
    SHOPSTREAM_PORT=8080 \
    SHOPSTREAM_DATA_DIR=/data \
    ICE_PORT_RANGE=50000-50199
VOLUME /data
EXPOSE 8080/tcp 50000-50199/udp
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SHOPSTREAM_PORT', '8080'), timeout=4)"]
CMD ["shopstream", "serve"]
