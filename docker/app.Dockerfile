# syntax=docker/dockerfile:1
# The digitloop app image: the sketchpad (digitloop ui), the loop's steps (digitloop loop step),
# the MLflow tracking server and the chart's jobs. Build from the repository root:
#   docker build -f docker/app.Dockerfile -t digitloop-app:0.1.0 .
# CPU torch from PyTorch's CPU index, MNIST baked in (checked against its published SHA-256s by
# the product's own loader, so pods never download it), helm for the rollout step (checked
# against its published SHA-256), the chart at /app/charts/digitloop, a non-root user.

ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

# --- build: a virtual environment with the project and its pinned dependencies -------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# boto3: the MLflow server writes proxied artefacts to MinIO through it.
ARG EXTRA_PACKAGES="boto3==1.44.8"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch alone first, without its dependencies: the CPU index serves torch, PyPI the rest.
RUN pip install --no-deps "torch==${TORCH_VERSION}+cpu" --extra-index-url "${TORCH_INDEX}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY contracts ./contracts
COPY model ./model
COPY services ./services
COPY ui ./ui
COPY pipelines ./pipelines
COPY digitloop ./digitloop
# The serving closure at the versions the tests ran with (requirements/serving.txt, as the
# serving image and `make install`); the UI and pipelines extras resolve around them.
RUN pip install -c requirements/serving.txt ".[serve,ui,pipelines]" ${EXTRA_PACKAGES}
# MNIST, downloaded once here and verified by model.data against the official SHA-256s.
RUN DIGITLOOP_DATA_DIR=/opt/digitloop python -c "from model.data import load_mnist; load_mnist()" \
    && test -s /opt/digitloop/mnist/mnist.npz

# --- helm: the rollout step's `helm upgrade`, checked against the published SHA-256 ---------
FROM ${PYTHON_IMAGE} AS helm
ARG HELM_VERSION=v4.3.0
ARG HELM_SHA256_AMD64=86584a54def73570558f66f5111cc53dfed56689637ae32c1201205d494f54fb
ARG HELM_SHA256_ARM64=31c5794dd55c66a51e6b7d2e2ac7a114ae8b1de41ff1d9ba51748ac973b06a08
ARG TARGETARCH
ADD https://get.helm.sh/helm-${HELM_VERSION}-linux-${TARGETARCH}.tar.gz /tmp/helm.tar.gz
RUN set -eu; \
    case "${TARGETARCH}" in \
      amd64) expected="${HELM_SHA256_AMD64}" ;; \
      arm64) expected="${HELM_SHA256_ARM64}" ;; \
      *) echo "no pinned helm checksum for ${TARGETARCH}" >&2; exit 1 ;; \
    esac; \
    echo "${expected}  /tmp/helm.tar.gz" | sha256sum --check --strict; \
    tar -xzf /tmp/helm.tar.gz -C /tmp "linux-${TARGETARCH}/helm"; \
    install -m 0755 "/tmp/linux-${TARGETARCH}/helm" /usr/local/bin/helm

# --- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="digitloop-app" \
      org.opencontainers.image.description="digitloop UI, loop steps, MLflow server and jobs"
RUN groupadd --gid 10001 digitloop \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin digitloop
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/digitloop /opt/digitloop
COPY --from=helm /usr/local/bin/helm /usr/local/bin/helm
COPY charts/digitloop /app/charts/digitloop
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    DIGITLOOP_DATA_DIR=/tmp/digitloop \
    DIGITLOOP_MNIST_PATH=/opt/digitloop/mnist/mnist.npz \
    MPLCONFIGDIR=/tmp/matplotlib \
    GRADIO_ANALYTICS_ENABLED=False
WORKDIR /app
USER 10001:10001
EXPOSE 5000 7860
CMD ["digitloop", "--help"]
