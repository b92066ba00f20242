#!/bin/sh
# Starts a throw-away sshd on 127.0.0.1 (own host key, own authorized key,
# no system config touched) and runs bench/hosts.lua through it.
set -e
cd "$(dirname "$0")/.."
BIN=${ATOMLUA_BIN:-build/atomlua}
D=$(mktemp -d /tmp/atomlua-bench-sshd-XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ssh-keygen -q -t ed25519 -N '' -f "$D/hostkey"
ssh-keygen -q -t ed25519 -N '' -f "$D/id"
cp "$D/id.pub" "$D/authorized_keys"
mkdir -p /run/sshd
cat > "$D/sshd_config" <<CFG
Port $PORT
ListenAddress 127.0.0.1
HostKey $D/hostkey
AuthorizedKeysFile $D/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
UsePAM no
StrictModes no
PidFile $D/sshd.pid
CFG
/usr/sbin/sshd -D -e -f "$D/sshd_config" 2>"$D/sshd.log" &
SSHD=$!
trap 'kill $SSHD; rm -rf "$D"' EXIT
sleep 0.5
HOSTS_SSH="ssh -T -p $PORT -i $D/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR root@127.0.0.1" \
  "$BIN" run bench/hosts.lua
