# atomlua — `make` builds build/atomlua (the CLI) and build/atom.so (the Lua module).
# `make test` installs what is missing, builds and runs every test; `make check`
# does the same with warnings as errors and ASan/UBSan, plus a short fuzzing
# run; `make fuzz` fuzzes the decoders longer; `make bench` benchmarks.

PKGS     := lua5.4-luv libuv lua5.4
CC       ?= cc
OPT      ?= -O2
CFLAGS   ?= $(OPT) -g
XCFLAGS  := -std=gnu11 -Wall -Wextra -D_GNU_SOURCE $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
BUILD    ?= build
SAN      ?=

SRCS     := $(filter-out src/main.c,$(wildcard src/*.c))
LUAFILES := $(shell find lua -name '*.lua' | sort)
OBJS     := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(SRCS)) $(BUILD)/obj/embed.o
PICOBJS  := $(patsubst src/%.c,$(BUILD)/pic/%.o,$(SRCS)) $(BUILD)/pic/embed.o

# The CLI links Lua, luv and libuv statically (faster start, one self-contained file)
# and exports Lua's symbols for C modules a scenario may require.
BIN_LIBS := -Wl,-E -Wl,-Bstatic -llua5.4-luv -llua5.4 -luv_a -Wl,-Bdynamic -lm -ldl -lpthread
# The module gets Lua from the interpreter that loads it.
SO_LIBS  := -llua5.4-luv -luv -lm -ldl -lpthread

PREFIX   ?= /usr/local
LUA_CMOD ?= $(PREFIX)/lib/lua/5.4

.PHONY: all deps demo test test-long check bench lint clean install fuzz fuzz-build
all: $(BUILD)/atomlua $(BUILD)/atom.so

HDRS     := $(wildcard src/*.h)

$(BUILD)/obj/%.o: src/%.c $(HDRS) | $(BUILD)/obj
	$(CC) $(CFLAGS) $(SAN) $(XCFLAGS) -c $< -o $@
$(BUILD)/pic/%.o: src/%.c $(HDRS) | $(BUILD)/pic
	$(CC) $(CFLAGS) $(SAN) $(XCFLAGS) -fPIC -DATOM_MODULE -c $< -o $@
$(BUILD)/obj/embed.o $(BUILD)/pic/embed.o: $(BUILD)/embed.c
	$(CC) $(CFLAGS) $(SAN) $(XCFLAGS) -fPIC -c $< -o $@
$(BUILD)/embed.c: tools/embed.lua $(LUAFILES) | $(BUILD)/obj
	lua5.4 tools/embed.lua $(LUAFILES) > $@.tmp && mv $@.tmp $@
$(BUILD)/obj $(BUILD)/pic:
	mkdir -p $@

$(BUILD)/atomlua: $(BUILD)/obj/main.o $(OBJS)
	$(CC) $(CFLAGS) $(SAN) -o $@ $^ $(BIN_LIBS)
$(BUILD)/obj/main.o: src/main.c $(HDRS) | $(BUILD)/obj
	$(CC) $(CFLAGS) $(SAN) $(XCFLAGS) -c $< -o $@
$(BUILD)/atom.so: $(PICOBJS)
	$(CC) $(CFLAGS) $(SAN) -shared -o $@ $^ $(SO_LIBS)

deps:
	@sh tools/install-deps.sh

demo: deps
	@$(MAKE) --no-print-directory all
	$(BUILD)/atomlua run scenarios/demo.lua

test: deps
	@$(MAKE) --no-print-directory all
	@sh tools/run-tests.sh $(BUILD)

# Everything, including the soak tests tagged #long (e.g. etcd partitions 20 times).
test-long: deps
	@$(MAKE) --no-print-directory all
	@ATOMLUA_LONG=1 sh tools/run-tests.sh $(BUILD)

# Warnings as errors plus ASan/UBSan, in a build directory of its own.
CHECK_FLAGS := -Werror -Wshadow -Wundef -Wwrite-strings -Wmissing-prototypes -fno-omit-frame-pointer
check: deps
	@$(MAKE) --no-print-directory all BUILD=build/check OPT=-O1 \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined $(CHECK_FLAGS)"
	@ATOMLUA_SANITIZE=1 sh tools/run-tests.sh build/check
	@# A full GC on every resume: bounds on elapsed time (#timing) mean nothing there.
	@ATOMLUA_SANITIZE=1 ATOMLUA_GC=aggressive BUSTED_EXTRA=--exclude-tags=stress,timing sh tools/run-tests.sh build/check
	@$(MAKE) --no-print-directory fuzz FUZZ_SECS=30

# libFuzzer harnesses (fuzz/) for the JSON and ITF decoders, built with clang,
# ASan and UBSan over the whole runtime. `make fuzz` runs each for FUZZ_SECS
# seconds from fuzz/seeds/ (new inputs go to build/fuzz/corpus/); a crash
# leaves its input in build/fuzz/ and fails the target.
FUZZ_SECS    ?= 300
FUZZ_CC      := clang
FUZZ_BUILD   := build/fuzz
FUZZ_CFLAGS  := -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined \
                -fno-sanitize-recover=undefined
FUZZ_NAMES   := json itf
FUZZ_OBJS    := $(patsubst src/%.c,$(FUZZ_BUILD)/obj/%.o,$(SRCS)) $(FUZZ_BUILD)/obj/embed.o
FUZZ_BINS    := $(patsubst %,$(FUZZ_BUILD)/%_fuzz,$(FUZZ_NAMES))
.SECONDARY: $(FUZZ_OBJS)

$(FUZZ_BUILD)/obj/%.o: src/%.c $(HDRS) | $(FUZZ_BUILD)/obj
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(XCFLAGS) -c $< -o $@
$(FUZZ_BUILD)/obj/embed.o: $(BUILD)/embed.c | $(FUZZ_BUILD)/obj
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(XCFLAGS) -c $< -o $@
$(FUZZ_BUILD)/obj:
	mkdir -p $@
$(FUZZ_BUILD)/%_fuzz: fuzz/%_fuzz.c fuzz/fuzz_lua.h $(FUZZ_OBJS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $(XCFLAGS) -o $@ $< $(FUZZ_OBJS) $(SO_LIBS) -llua5.4

fuzz-build: deps $(FUZZ_BINS)

fuzz: fuzz-build
	@for n in $(FUZZ_NAMES); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$n && \
	  echo "fuzz: $$n for $(FUZZ_SECS)s" && \
	  ( cd $(FUZZ_BUILD) && ASAN_OPTIONS=detect_leaks=1 ./$${n}_fuzz -max_total_time=$(FUZZ_SECS) \
	      -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
	      corpus/$$n ../../fuzz/seeds/$$n >$${n}.log 2>&1 ) || \
	  { tail -40 $(FUZZ_BUILD)/$${n}.log; exit 1; }; \
	  grep -E '^stat::number_of_executed_units' $(FUZZ_BUILD)/$${n}.log; \
	done

bench: deps
	@$(MAKE) --no-print-directory all
	@sh bench/run.sh $(BUILD)

# The binary, the Lua module, the editor annotations (atomlua --types-path)
# and the manual page.
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(LUA_CMOD) $(DESTDIR)$(PREFIX)/share/atomlua/types \
	  $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 755 $(BUILD)/atomlua $(DESTDIR)$(PREFIX)/bin/atomlua
	install -m 644 $(BUILD)/atom.so $(DESTDIR)$(LUA_CMOD)/atom.so
	install -m 644 types/atom.lua $(DESTDIR)$(PREFIX)/share/atomlua/types/atom.lua
	install -m 644 docs/atomlua.1 $(DESTDIR)$(PREFIX)/share/man/man1/atomlua.1

lint:
	clang-format --dry-run -Werror src/*.c src/*.h
	cppcheck --enable=warning,style --error-exitcode=1 --quiet --suppress=missingIncludeSystem src

clean:
	rm -rf build
