#!/bin/sh
# Kernel nfsd: a ZFS dataset exported with exportfs, mounted over NFSv4.2 on loopback, a
# file read back through the mount and one written back through it. /var/lib/nfs is on
# the read-only root (stored will keep it on /data), so a copy on /tmp is bound over it.
set -eux
share=/tmp/zroot/tank/nfs
zfs create tank/nfs
echo 'hello over nfs' > "$share/hello.txt"

mkdir -p /tmp/nfs-state
cp -a /var/lib/nfs/. /tmp/nfs-state/
mount --bind /tmp/nfs-state /var/lib/nfs
if ! systemctl start nfs-server; then
    systemctl status --no-pager nfs-server nfs-mountd || true
    journalctl -b --no-pager -u nfs-server -u nfs-mountd -u rpcbind || true
    exit 1
fi
# No NFSv4 grace period to wait out: nfsdcld tells the kernel no client has state to
# reclaim ("NFSD: no clients to reclaim, skipping NFSv4 grace period").
exportfs -o rw,no_root_squash,no_subtree_check,fsid=7 "127.0.0.1:$share"
exportfs -v | grep -q "$share"

mkdir -p /tmp/nfs-mnt
mount -t nfs4 -o vers=4.2 "127.0.0.1:$share" /tmp/nfs-mnt
findmnt /tmp/nfs-mnt
[ "$(cat /tmp/nfs-mnt/hello.txt)" = 'hello over nfs' ]
echo 'written by the client' > /tmp/nfs-mnt/back.txt
[ "$(cat "$share/back.txt")" = 'written by the client' ]
umount /tmp/nfs-mnt
echo NFS-OK
