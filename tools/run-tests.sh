#!/bin/sh
# Runs every test against the build in $1 (default build): the busted specs
# (module mode and end-to-end, which run the binary), then the C tests.
# ATOMLUA_SANITIZE=1 preloads ASan/UBSan so stock lua5.4 can load atom.so.
set -e
# libuv assumes fds 0-2 are open; CI may start us without a stdin.
exec </dev/null
BUILD=${1:-build}
cd "$(dirname "$0")/.."
export ATOMLUA_BIN="$PWD/$BUILD/atomlua"
export ATOMLUA_CPATH="$PWD/$BUILD/?.so"
export ATOMLUA_PORT_DIR="${ATOMLUA_PORT_DIR:-/tmp/atomlua-ports-test}"
PRELOAD=""
if [ -n "$ATOMLUA_SANITIZE" ]; then
  # Only busted gets the sanitizer runtimes preloaded (stock lua5.4 loading an
  # ASan-built atom.so); the compiler and the C tests must not.
  PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:detect_odr_violation=0"
  export LSAN_OPTIONS="suppressions=$PWD/tools/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
fi
status=0
passed=0
failed=0
# C tests: each spec/c/*.c is a program that exits non-zero on failure.
if ls spec/c/*.c >/dev/null 2>&1; then
  mkdir -p "$BUILD/ctest"
  for t in spec/c/*.c; do
    exe="$BUILD/ctest/$(basename "$t" .c)"
    cc -g -O1 -D_GNU_SOURCE -Isrc $(pkg-config --cflags libuv lua5.4) -o "$exe" "$t" $(pkg-config --libs libuv) -lpthread
    if "$exe" >/dev/null 2>"$exe.err"; then
      echo "ok   $t"; passed=$((passed + 1))
    else
      echo "FAIL $t"; cat "$exe.err"; status=1; failed=$((failed + 1))
    fi
  done
fi
# busted in TAP form, so the totals can be counted for the closing line.
# The specs' own stderr (module-mode failure blocks and abandoned-task
# warnings that specs provoke on purpose) goes to a file of its own, shown
# only when something failed: a green run prints only the totals.
tap="$BUILD/busted.tap"
errlog="$BUILD/busted.stderr"
# BUSTED_EXTRA: e.g. --exclude-tags=stress for the aggressive-GC pass.
# Tests tagged #long (soak runs) only with ATOMLUA_LONG=1 (make test-long).
LONG="--exclude-tags=long"
[ -n "$ATOMLUA_LONG" ] && LONG=""
LD_PRELOAD="$PRELOAD" busted --lua=lua5.4 --cpath="$PWD/$BUILD/?.so" -o TAP $LONG $BUSTED_EXTRA spec </dev/null >"$tap" 2>"$errlog" || status=1
grep -v -e '^ok ' -e '^1\.\.[0-9]*$' "$tap" || true
passed=$((passed + $(grep -c '^ok ' "$tap" || true)))
failed=$((failed + $(grep -c '^not ok ' "$tap" || true)))
[ "$failed" -gt 0 ] && status=1
if [ "$status" -ne 0 ] && [ -s "$errlog" ]; then
  echo "--- stderr of the specs ($errlog):"
  cat "$errlog"
fi
echo "tests: $passed passed, $failed failed"
exit $status
