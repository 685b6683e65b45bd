# Two images from one file (no `# syntax=` line: BuildKit would pull a frontend image, which
# fails offline; the default frontend reads this file):
#   --target sidecar   the injected sidecar: cryptography, pyyaml and ipsec_mesh only
#   (default) operator the kopf operator (runs as 65532), with kopf, kubernetes and aiohttp
# Build with the OCI labels filled in:
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) -t ipsec-mesh .
#   docker build --target sidecar --build-arg VERSION=0.1.0 --build-arg REVISION=... -t ipsec-mesh-sidecar .
# Pin the base further by digest in CI: --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# Both venvs are built by docker/build-venv.sh (tests/deploy runs the same script): wheels only,
# every package pinned and hash-checked (docker/*.lock.txt), the build backend pinned too.
FROM ${PYTHON_IMAGE} AS build-sidecar
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY docker docker
RUN docker/build-venv.sh deps sidecar /opt/ipsec-mesh
COPY pyproject.toml README.md ./
COPY sidecar sidecar
COPY operator operator
RUN docker/build-venv.sh project sidecar /opt/ipsec-mesh

FROM ${PYTHON_IMAGE} AS build-operator
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY docker docker
RUN docker/build-venv.sh deps operator /opt/ipsec-mesh
COPY pyproject.toml README.md ./
COPY sidecar sidecar
COPY operator operator
RUN docker/build-venv.sh project operator /opt/ipsec-mesh

# The runtime base: the interpreter without pip, setuptools and wheel (nothing installs at run time).
# python's images ship the standard library without bytecode (docker-library/python#615), and
# PYTHONDONTWRITEBYTECODE below (and a non-root, read-only container) keeps it that way: every
# start would compile asyncio, ssl, logging... from source, which leaves a sidecar 1.4 MB larger
# for its whole life (docs/benchmarks.md, "Sidecar memory"). Compiled once here instead, for
# plain runs (the operator) and for -OO (the sidecar, below).
FROM ${PYTHON_IMAGE} AS runtime
RUN python -m pip uninstall --yes --no-cache-dir pip setuptools wheel \
 && python -m compileall -q -j 0 -o 0 -o 2 -x '/(test|tests|idle_test)/' \
      "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"
ENV PATH=/opt/ipsec-mesh/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/ipsec-mesh/ipsec-mesh
LABEL org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

FROM runtime AS sidecar
LABEL org.opencontainers.image.title="ipsec-mesh-sidecar" \
      org.opencontainers.image.description="ipsec-mesh sidecar: per-pod IKEv2 and transport-mode ESP"
# glibc raises its trim threshold (and mmap threshold) after a large block is freed, and then
# keeps freed heap for good; setting the threshold (to its default, 128 KiB) turns that off:
# -0.3 MB RssAnon per sidecar, no CPU cost measured per IKE SA (docs/benchmarks.md).
# -OO: no docstrings in memory (every module's, the standard library's and ours): -0.7 MB
# RssAnon per sidecar. It also drops `assert`; the sidecar has none (its invariants raise
# InvariantError; tests/unit/test_sidecar_mesh_imports.py keeps it so). Bytecode for -OO is
# compiled below and in the runtime stage, or every start would compile from source.
ENV MALLOC_TRIM_THRESHOLD_=131072 \
    PYTHONOPTIMIZE=2
COPY --from=build-sidecar /opt/ipsec-mesh /opt/ipsec-mesh
# The Service translation (docs/services.md): libnftables and netfilter's own Python binding.
# The binding is pure Python (ctypes); take it out of Debian's python3-nftables without the
# Debian interpreter that package depends on.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnftables1 \
 && cd /tmp && apt-get download python3-nftables \
 && dpkg-deb -x python3-nftables_*.deb /tmp/nft \
 && cp -r /tmp/nft/usr/lib/python3/dist-packages/nftables \
      "$(/opt/ipsec-mesh/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/" \
 && /opt/ipsec-mesh/bin/python -m compileall -q -j 0 -o 2 \
      "$(/opt/ipsec-mesh/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && rm -rf /tmp/nft /tmp/*.deb /var/lib/apt/lists/*
# The admission webhook sets the user (see docs/install.md, "What injected pods need").
USER 65532:65532
CMD ["ipsec-mesh-sidecar", "mesh"]

FROM runtime AS operator
LABEL org.opencontainers.image.title="ipsec-mesh" \
      org.opencontainers.image.description="Per-pod IKEv2 and transport-mode ESP for Kubernetes"
COPY --from=build-operator /opt/ipsec-mesh /opt/ipsec-mesh
COPY crds /opt/ipsec-mesh/share/crds
ENV IPSEC_MESH_CRD=/opt/ipsec-mesh/share/crds/ipsecpeerings.yaml
USER 65532:65532
CMD ["kopf", "run", "--all-namespaces", "--standalone", "--log-format=json", "-m", "ipsec_mesh_operator.handlers"]
