#!/bin/sh
# Samba: smbd serving a ZFS dataset as share `media` to guests, on loopback only; smbclient
# lists the shares and fetches a file. Every state directory is under /tmp because the
# root is read-only (stored will keep them on /data).
set -eux
share=/tmp/zroot/tank/smb
zfs create tank/smb
echo 'hello over smb' > "$share/hello.txt"
chmod 0755 "$share"
chmod 0644 "$share/hello.txt"

s=/tmp/samba
mkdir -p "$s/private" "$s/lock" "$s/state" "$s/cache" "$s/pid" "$s/ncalrpc"
chmod 0700 "$s/private"
cat > "$s/smb.conf" <<CONF
[global]
    server role = standalone server
    interfaces = lo
    bind interfaces only = yes
    disable netbios = yes
    smb ports = 445
    map to guest = Bad User
    guest account = nobody
    load printers = no
    printcap name = /dev/null
    disable spoolss = yes
    private dir = $s/private
    lock directory = $s/lock
    state directory = $s/state
    cache directory = $s/cache
    pid directory = $s/pid
    ncalrpc dir = $s/ncalrpc
    log file = $s/log.%m
[media]
    path = $share
    guest ok = yes
    read only = yes
CONF
testparm -s "$s/smb.conf" > /dev/null
smbd -s "$s/smb.conf" -D
i=0
until ss -ltn | grep -q ':445 '; do
    i=$((i + 1))
    if [ "$i" -gt 60 ]; then
        echo "smbd is not listening on 445 after 60 s" >&2
        cat "$s"/log.* >&2 || true
        exit 1
    fi
    sleep 1
done

smbclient -s "$s/smb.conf" -N -L //127.0.0.1 | tee "$s/list"
grep -Eq '^[[:space:]]+media[[:space:]]+Disk' "$s/list"
smbclient -s "$s/smb.conf" -N //127.0.0.1/media -c "get hello.txt $s/got.txt"
[ "$(cat "$s/got.txt")" = 'hello over smb' ]
echo SMB-OK
