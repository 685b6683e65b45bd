# syntax=docker/dockerfile:1
# One image for both roles: the operator (kopf, runs as 65532) and the sidecar
# (injected with runAsUser 0 and only CAP_NET_ADMIN, see the admission webhook).
# Pin the base further by digest in CI: --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/ipsec-mesh
ENV PATH=/opt/ipsec-mesh/bin:$PATH
WORKDIR /src
COPY docker/requirements.txt docker/constraints.txt docker/
# Wheels only, every package pinned (constraints.txt holds the transitive ones too).
RUN pip install --only-binary=:all: -c docker/constraints.txt -r docker/requirements.txt
COPY pyproject.toml README.md ./
COPY sidecar sidecar
COPY operator operator
RUN pip install --no-deps .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="ipsec-mesh" \
      org.opencontainers.image.description="Per-pod IKEv2 and transport-mode ESP for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/ipsec-mesh /opt/ipsec-mesh
COPY crds /opt/ipsec-mesh/share/crds
# The sidecar's Service translation (docs/services.md): libnftables and netfilter's own Python
# binding. The binding is pure Python (ctypes); take it out of Debian's python3-nftables without
# the Debian interpreter that package depends on.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnftables1 \
 && cd /tmp && apt-get download python3-nftables \
 && dpkg-deb -x python3-nftables_*.deb /tmp/nft \
 && cp -r /tmp/nft/usr/lib/python3/dist-packages/nftables \
      "$(/opt/ipsec-mesh/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/" \
 && rm -rf /tmp/nft /tmp/*.deb /var/lib/apt/lists/*
ENV PATH=/opt/ipsec-mesh/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IPSEC_MESH_CRD=/opt/ipsec-mesh/share/crds/ipsecpeerings.yaml
USER 65532:65532
CMD ["kopf", "run", "--all-namespaces", "--standalone", "--log-format=json", "-m", "ipsec_mesh_operator.handlers"]
