#!/bin/sh
# Installs the Debian packages atomlua builds and tests with, when any is missing.
# Idempotent and quiet when everything is there; runs apt-get update first.
set -e
PKGS="liblua5.4-dev lua5.4 libuv1-dev lua-luv-dev lua-cjson-dev libcurl4-openssl-dev
lua-busted pkg-config make gcc libc6-dev python3 nodejs procps util-linux libxml2-utils
nginx-light etcd-server redis-server wrk chromium
libwslay1 libwslay-dev python3-websockets libssl-dev openssl curl
nftables libnftables1 libnftables-dev iproute2
protobuf-compiler libprotobuf-dev python3-grpcio
python3-protobuf
clang libclang-rt-14-dev
openssh-server openssh-client"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
