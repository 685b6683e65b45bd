#!/usr/bin/env bash
# Produces strongswan_ikev2.txt: a real IKEv2 exchange between two strongSwan charon
# daemons (PSK, aes256gcm16-prfsha256-x25519, IKE fragmentation forced with a tiny
# fragment_size, childless IKE SA), captured with tcpdump, plus the SK_e keys charon
# logs at "ike 4" so the tests can decrypt the protected messages.
# Needs root, strongswan-charon, strongswan-swanctl, tcpdump, tshark. Test keys only.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
a="ssA$$"; b="ssB$$"
cleanup() {
    for ns in "$a" "$b"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$a"; ip netns add "$b"
ip link add "va$$" netns "$a" type veth peer name "vb$$" netns "$b"
ip -n "$a" addr add 10.77.0.1/24 dev "va$$"; ip -n "$a" link set "va$$" up; ip -n "$a" link set lo up
ip -n "$b" addr add 10.77.0.2/24 dev "vb$$"; ip -n "$b" link set "vb$$" up; ip -n "$b" link set lo up

write_conf() {  # name local remote local_id remote_id
    local dir="$work/$1"; mkdir -p "$dir/run"
    cat > "$dir/strongswan.conf" <<CONF
charon {
  load = random nonce aes sha1 sha2 hmac gcm curve25519 kdf pem pkcs1 x509 pubkey openssl kernel-netlink socket-default vici
  fragment_size = 200
  install_routes = no
  filelog {
    log { path = $dir/charon.log
          default = 1
          ike = 4 }
  }
  plugins { vici { socket = unix://$dir/charon.vici } }
}
swanctl { socket = unix://$dir/charon.vici }
CONF
    cat > "$dir/swanctl.conf" <<CONF
connections {
  t {
    version = 2
    local_addrs = $2
    remote_addrs = $3
    proposals = aes256gcm16-prfsha256-x25519
    fragmentation = force
    childless = force
    local { auth = psk
            id = $4 }
    remote { auth = psk
             id = $5 }
  }
}
secrets { ike-1 { id-1 = $4
                  id-2 = $5
                  secret = "codec-capture-test-only" } }
CONF
}
write_conf a 10.77.0.1 10.77.0.2 initiator.test responder.test
write_conf b 10.77.0.2 10.77.0.1 responder.test initiator.test

for side in a b; do
    ns=$a; [ $side = b ] && ns=$b
    ip netns exec "$ns" env STRONGSWAN_CONF="$work/$side/strongswan.conf" \
        sh -c "mount --bind $work/$side/run /run && exec /usr/lib/ipsec/charon" \
        >"$work/$side/stdout" 2>&1 &
done
ip netns exec "$a" tcpdump -i "va$$" -w "$work/cap.pcap" -U udp >/dev/null 2>&1 &
for _ in $(seq 50); do
    [ -S "$work/a/charon.vici" ] && [ -S "$work/b/charon.vici" ] && break; sleep 0.1
done
sleep 0.5
for side in a b; do
    ns=$a; [ $side = b ] && ns=$b
    ip netns exec "$ns" env STRONGSWAN_CONF="$work/$side/strongswan.conf" \
        swanctl --load-all --file "$work/$side/swanctl.conf" >/dev/null 2>&1
done
ip netns exec "$a" env STRONGSWAN_CONF="$work/a/strongswan.conf" \
    timeout 20 swanctl --initiate --ike t >"$work/initiate.log" 2>&1 || { cat "$work/initiate.log"; exit 1; }
sleep 1
kill %3 2>/dev/null || true; sleep 0.5

out="$here/strongswan_ikev2.txt"
{
    echo "# Real IKEv2 exchange strongSwan $(/usr/lib/ipsec/charon --version 2>&1 | awk '{print $NF}') <-> strongSwan, made by capture.sh on $(date -u +%F)."
    echo "# PSK, aes256gcm16-prfsha256-x25519, fragmentation=force, fragment_size=200, childless."
    echo "# Lines: 'packet <src ip> <src port> <dst port> <udp payload hex>' in capture order,"
    echo "# then 'key <name> <hex>' for charon's logged Sk_ei / Sk_er (test-only, ephemeral)."
    tshark -r "$work/cap.pcap" -T fields -e ip.src -e udp.srcport -e udp.dstport -e udp.payload \
        | awk '{print "packet", $1, $2, $3, $4}'
    python3 - "$work/a/charon.log" <<'PY'
import re, sys
lines = open(sys.argv[1]).read().splitlines()
for i, line in enumerate(lines):
    m = re.search(r"(Sk_e[ir]) secret => (\d+) bytes", line)
    if not m:
        continue
    hexdigits = ""
    for follow in lines[i + 1:]:
        d = re.match(r".*\s\d+: ((?:[0-9A-F]{2} ?)+)", follow)
        if not d or len(hexdigits) >= 2 * int(m.group(2)):
            break
        hexdigits += d.group(1).replace(" ", "")
    print("key", m.group(1), hexdigits[: 2 * int(m.group(2))].lower())
PY
} > "$out"
echo "wrote $out"
