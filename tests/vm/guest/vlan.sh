#!/bin/sh
# 802.1Q in the guest kernel. VLAN 10 over a veth pair between namespaces vlan-a and vlan-b;
# VLAN 20 over the two virtio NICs $1 and $2, which QEMU joins with a hub, each moved into
# its own namespace (vlan-c, vlan-d). Mismatched ids
# must not talk: that shows the tag is on the wire and checked.
set -eux

for ns in vlan-a vlan-b vlan-c vlan-d; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done

ip link add va type veth peer name vb
ip link set va netns vlan-a
ip link set vb netns vlan-b
ip link set "$1" netns vlan-c
ip link set "$2" netns vlan-d

vlan() { # namespace parent id address
    ip -n "$1" link set "$2" up
    ip -n "$1" link add link "$2" name "$2.$3" type vlan id "$3"
    ip -n "$1" addr add "$4" dev "$2.$3"
    ip -n "$1" link set "$2.$3" up
}
vlan vlan-a va 10 10.10.0.1/24
vlan vlan-b vb 10 10.10.0.2/24
vlan vlan-a va 11 10.11.0.1/24
vlan vlan-b vb 12 10.11.0.2/24
vlan vlan-c "$1" 20 10.20.0.1/24
vlan vlan-d "$2" 20 10.20.0.2/24

ip -n vlan-a -d link show va.10 | grep -q 'vlan protocol 802.1Q id 10'
ip netns exec vlan-a ping -c 3 -W 2 10.10.0.2
if ip netns exec vlan-a ping -c 2 -W 1 10.11.0.2; then
    echo "VLAN 11 reached VLAN 12: tags are not kept apart" >&2
    exit 1
fi
ip netns exec vlan-c ping -c 3 -W 2 10.20.0.2
echo VLAN-OK
