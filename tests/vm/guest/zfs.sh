#!/bin/sh
# ZFS in the guest: a mirror over the two blank disks $1 and $2 (by id), a dataset, a
# snapshot sent and received into a second dataset, a scrub, and an export and import.
# The pool is left imported at /tmp/zroot/tank for the NFS and SMB scripts. The root is
# read-only, so the pool has an altroot under /tmp (which also means no cache file in /etc).
set -eux
root=/tmp/zroot

modprobe zfs
zpool create -f -R "$root" -O compression=lz4 tank mirror "$1" "$2"
zpool status tank
zpool status tank | grep -Eq 'mirror-0 +ONLINE'

zfs create tank/src
head -c 8388608 /dev/urandom > "$root/tank/src/blob"
sum=$(sha256sum < "$root/tank/src/blob")
zfs snapshot tank/src@one
zfs send tank/src@one | zfs recv tank/copy
[ "$(sha256sum < "$root/tank/copy/blob")" = "$sum" ]
zfs list -t all -r tank
zfs list -H -o name -t snapshot tank/copy | grep -qx 'tank/copy@one'

zpool scrub -w tank
zpool status tank
zpool status tank | grep -q 'scrub repaired 0B .* with 0 errors'

zpool export tank
if zpool list tank 2>/dev/null; then
    echo "tank is still imported after export" >&2
    exit 1
fi
zpool import -d /dev/disk/by-id -R "$root" tank
[ "$(sha256sum < "$root/tank/copy/blob")" = "$sum" ]
[ "$(zpool list -H -o health tank)" = ONLINE ]
echo ZFS-OK
