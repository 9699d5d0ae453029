# syntax=docker/dockerfile:1
#
# One image, three programs:
#   vxlan-manager     node agent (DaemonSet, host network, NET_ADMIN + NET_RAW, uid 0)
#   ipam-controller   IPAM controller (Deployment, non-root uid 65532)
#   vmoverlay-cni     CNI plugin; runs on the host from the bundle the agent's
#                     init container installs (/opt/vmoverlay/bin/install-cni)
#
# Build from the repository root:  docker build -t REGISTRY/vmoverlay:0.1.0 .
# Base images are pinned by version; pin them by digest too in your registry
# mirror (python:3.11.11-slim-bookworm@sha256:...) for fully reproducible builds.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# libnftables and its Python binding (Debian's; not on PyPI): the CNI plugin's
# per-port anti-spoofing rules go through them. Only the build stage installs
# them; the bundle carries the library and the module to the nodes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnftables1=1.0.6-2+deb12u2 python3-nftables=1.0.6-2+deb12u2 \
 && rm -rf /var/lib/apt/lists/*

# Dependencies first (exact versions from the constraints file), so a source
# change does not re-download them.
COPY manifests/image/constraints.txt /tmp/constraints.txt
RUN python -m venv /opt/vmoverlay/venv \
 && /opt/vmoverlay/venv/bin/pip install -c /tmp/constraints.txt setuptools wheel \
      pyroute2 kubernetes scapy netaddr prometheus-client aiohttp PyYAML

COPY pyproject.toml README.md /src/
COPY vmoverlay /src/vmoverlay
COPY vxlan_manager /src/vxlan_manager
COPY ipam /src/ipam
COPY cni /src/cni
COPY e2e /src/e2e
# The build backend is the pinned one installed above (no build isolation).
RUN /opt/vmoverlay/venv/bin/pip install --no-build-isolation --no-deps /src \
 && cp -r /usr/lib/python3/dist-packages/nftables \
      "$(/opt/vmoverlay/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/" \
 && /opt/vmoverlay/venv/bin/python -m compileall -q /opt/vmoverlay/venv

# The CNI bundle: interpreter, libraries, loader and packages in one
# relocatable directory (see make-cni-bundle.sh for why).
COPY manifests/image/make-cni-bundle.sh manifests/image/install-cni.sh /opt/vmoverlay/bin/
RUN /opt/vmoverlay/bin/make-cni-bundle.sh /opt/vmoverlay/venv/bin/python /opt/vmoverlay/cni-bundle libnftables.so.1 \
 && mv /opt/vmoverlay/bin/install-cni.sh /opt/vmoverlay/bin/install-cni \
 && rm /opt/vmoverlay/bin/make-cni-bundle.sh

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="vmoverlay" \
      org.opencontainers.image.description="L2 overlay for Kubernetes VMs that live-migrate: stable IP and MAC" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

COPY --from=build /opt/vmoverlay /opt/vmoverlay

ENV PATH=/opt/vmoverlay/venv/bin:/opt/vmoverlay/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Fail the build if an entry point is missing.
RUN vxlan-manager --help >/dev/null \
 && ipam-controller --help >/dev/null \
 && command -v vmoverlay-cni >/dev/null \
 && test -x /opt/vmoverlay/bin/install-cni \
 && test -s /opt/vmoverlay/cni-bundle/ID

# Non-root by default (the IPAM controller runs so). The node agent and the CNI
# installer set runAsUser: 0 in their manifests: creating links and FDB
# entries in the host's network namespace needs CAP_NET_ADMIN, which Linux only
# grants a non-root process through ambient capabilities that Kubernetes does
# not set; they keep NET_ADMIN and NET_RAW (the installer: nothing) and drop
# every other capability.
USER 65532:65532
WORKDIR /tmp

ENTRYPOINT []
CMD ["ipam-controller", "--help"]
