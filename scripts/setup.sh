#!/usr/bin/env bash
# Installs everything ipsec-mesh and its tests need on a Debian/Ubuntu machine
# (run as root): system packages, then a virtualenv in .venv with the project.
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iproute2 iputils-ping nftables iptables tcpdump tshark procps psmisc gcc libc6-dev
  ethtool  # tests read the pod link's offload features independently of the sidecar (SCTP through a ClusterIP)
  strongswan-charon strongswan-swanctl libstrongswan-standard-plugins libstrongswan-extra-plugins
  strongswan-pki  # `pki`: tests cross-check our AlgorithmIdentifiers and certificates with strongSwan
  linux-image-amd64 qemu-system-x86 busybox-static
  libnftables1 python3-nftables  # the sidecar's Service translation: libnftables and netfilter's binding
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # charon must not start as a system service: tests run their own instances.
  echo 'exit 101' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# netfilter's `nftables` binding is not on PyPI; Debian's is pure Python (ctypes over libnftables1):
# link that one package, not all of Debian's dist-packages, into the venv.
ln -sfn /usr/lib/python3/dist-packages/nftables \
  "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nftables"
stamp=.venv/.ipsec-mesh-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi
