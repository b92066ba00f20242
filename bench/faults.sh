#!/bin/sh
# Network-fault benchmarks (bench/README.md "Network faults"):
#   sh bench/faults.sh [BUILD_DIR]
set -e
here=$(dirname "$0")
bin=${1:-build}/atomlua
"$bin" run --isolate "$here/faults_partition.lua" -- 200 | grep '^RESULT'
"$bin" run "$here/faults_proxy.lua" -- 5000 | grep '^RESULT'
