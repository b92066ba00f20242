#!/bin/sh
# `make bench` runs `sh bench/run.sh BUILD_DIR`: the benchmark table of
# bench/README.md. Extra arguments go to bench/harness.py (see --help), e.g.
#   sh bench/run.sh build --only W1,W6 --repeat 3 -v
set -e
here=$(dirname "$0")
build=${1:-build}
[ $# -gt 0 ] && shift
exec python3 "$here/harness.py" --build "$build" "$@"
