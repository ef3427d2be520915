#!/bin/sh
# WireGuard in the guest kernel: a tunnel between namespaces wg-c and wg-d whose underlay
# is the virtio NICs $1 and $2, joined by a QEMU UDP socket cable on the host (the link
# two VMs use). Fresh keys, a handshake, and a ping through the tunnel.
set -eux
umask 077
for side in c d; do
    ip netns add "wg-$side"
    ip -n "wg-$side" link set lo up
done
ip link set "$1" netns wg-c
ip link set "$2" netns wg-d
ip -n wg-c addr add 10.30.0.1/24 dev "$1"
ip -n wg-d addr add 10.30.0.2/24 dev "$2"
ip -n wg-c link set "$1" up
ip -n wg-d link set "$2" up
ip netns exec wg-c ping -c 2 -W 2 10.30.0.2

keys=$(mktemp -d)
for side in c d; do
    wg genkey > "$keys/$side.key"
    wg pubkey < "$keys/$side.key" > "$keys/$side.pub"
done

tunnel() { # side peer underlay-of-peer address-of-peer address
    ip -n "wg-$1" link add wg0 type wireguard
    ip netns exec "wg-$1" wg set wg0 listen-port 51820 private-key "$keys/$1.key" \
        peer "$(cat "$keys/$2.pub")" endpoint "$3:51820" allowed-ips "$4/32"
    ip -n "wg-$1" addr add "$5/24" dev wg0
    ip -n "wg-$1" link set wg0 up
}
tunnel c d 10.30.0.2 10.99.0.2 10.99.0.1
tunnel d c 10.30.0.1 10.99.0.1 10.99.0.2

ip netns exec wg-c ping -c 3 -W 2 10.99.0.2
ip netns exec wg-c wg show wg0
handshake=$(ip netns exec wg-c wg show wg0 latest-handshakes | awk '{print $2}')
[ "${handshake:-0}" -gt 0 ]
received=$(ip netns exec wg-d wg show wg0 transfer | awk '{print $2}')
[ "${received:-0}" -gt 0 ]
echo WIREGUARD-OK
