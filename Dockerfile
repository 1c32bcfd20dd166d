# syntax=docker/dockerfile:1
# Tensor Trigger image: `tt-server` by default; the worker runs the same image with the command `tt-worker`.
#
#   docker build -t tensortrigger:dev .
#   docker run --rm -p 50051:50051 tensortrigger:dev                   # server, embedded storage
#   docker run --rm tensortrigger:dev tt-server --help                 # every setting, its variable and default
#   docker run --rm -e TT_AMQP_URL=amqp://... tensortrigger:dev tt-worker   # the job worker (k8s: `command`)
#
# No HEALTHCHECK: Kubernetes ignores it. The pods' native gRPC probes ask the server's own grpc.health.v1
# service, which knows about draining; a HEALTHCHECK would need a probe binary in the image for nothing.

# Both stages start from the same image: the venv built in the first is copied into the second, and its
# `python` symlink points at the base image's interpreter. Pinned to a patch release (bump deliberately);
# for fully reproducible builds pin the digest too: python:3.11.14-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- builder: resolve and install everything into /opt/venv ------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# 1. Third-party dependencies from the committed runtime lock (exact versions, sha256-checked), so an image built
#    tomorrow has the same packages as one built today; this slow layer (TensorFlow is ~600 MB) is rebuilt only
#    when the lock changes. Wheels only: the builder has no compiler and needs none.
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --no-cache-dir --only-binary=:all: --require-hashes --no-deps -r requirements/runtime.txt

# 2. The client package (generated contract) the server depends on.
COPY clients/python/ clients/python/
RUN pip install --no-cache-dir --no-deps --no-build-isolation ./clients/python

# 3. Our code, without touching the dependencies installed above. A regular (not editable) install: the
#    runtime stage gets the venv and nothing from /src. pip compiles the .pyc files here, which matters
#    because the runtime filesystem is read-only. The import is a smoke test on the same base image the
#    runtime uses: a missing module or shared library fails the build, not the first pod start.
COPY tt_server/ tt_server/
COPY tt_worker/ tt_worker/
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
 && python -c "import tt_server.main, tt_worker.main"

# --- runtime: the base image, the venv, a non-root user. No pip cache, no sources, no build tools. ----------
FROM ${PYTHON_IMAGE} AS runtime
# uid/gid 10001: above the host's and the distribution's users (>= 10000), and what the pods' securityContext
# sets (runAsUser: 10001); no home, no login shell.
RUN groupadd --system --gid 10001 tt \
 && useradd --system --uid 10001 --gid tt --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tt \
 && mkdir -p /var/lib/tt \
 && chown tt:tt /var/lib/tt
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TT_GRPC_ADDRESS=0.0.0.0:50051 \
    TT_DATA_DIR=/var/lib/tt \
    KERAS_HOME=/tmp/.keras
# Keras writes its config under KERAS_HOME: /tmp is writable here, and an emptyDir in Kubernetes, where the
# root filesystem is read-only. TT_DATA_DIR is the pods' scratch emptyDir (Docker: an anonymous volume).
VOLUME ["/var/lib/tt"]
USER 10001:10001
WORKDIR /var/lib/tt
# gRPC, the HTTP/JSON front (when TT_HTTP_ADDRESS=0.0.0.0:8501, as in k8s/), Prometheus metrics.
EXPOSE 50051 8501 9090
# CMD, not ENTRYPOINT: `docker run IMAGE tt-worker` (and a pod's `command`) runs the worker instead.
CMD ["tt-server"]
