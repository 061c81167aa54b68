# Builds keel's libFuzzer harnesses with clang (ASan + UBSan + libFuzzer).
# Used by tests/fuzz/run.sh; by hand:
#   make -f tests/fuzz/fuzz.mk SRC=$PWD OUT=.dev/fuzz CONFIG=.dev/build
# SRC is the source tree, OUT the output directory, CONFIG a directory that
# holds the config.h of a configured build.

SRC ?= .
OUT ?= .dev/fuzz
CONFIG ?= .dev/build
CC = clang

HARNESSES = fuzz_token fuzz_router fuzz_manifest fuzz_conf fuzz_json_body
# The creator plugin's import, driven through its entry point with a host
# table of its own (fuzz_import.c), so it links the plugin, not the core.
HARNESSES += fuzz_import
CREATOR_SRCS := $(wildcard $(SRC)/plugins/creator/*.c)
CREATOR_OBJS := $(patsubst $(SRC)/plugins/creator/%.c,$(OUT)/obj/creator/%.o,$(CREATOR_SRCS))

PKGS = libmicrohttpd libpq jansson libjwt libcrypto libcurl
DEP_CFLAGS := $(shell pkg-config --cflags $(PKGS))
DEP_LIBS := $(shell pkg-config --libs $(PKGS)) -lltdl -lpthread

SAN = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
CFLAGS = -std=gnu11 -g -O1 $(SAN) -Wall -Wextra -Wno-unused-parameter \
	-I$(CONFIG) -I$(SRC)/include -I$(SRC)/core -I$(SRC)/plugins/creator $(DEP_CFLAGS) \
	-DKEEL_PLUGINDIR='"/nonexistent/keel"' -DKEEL_DATADIR='"/nonexistent/keel"' \
	-DKEEL_FUZZ_SRCDIR='"$(abspath $(SRC))"' -MMD -MP

CORE_SRCS := $(filter-out $(SRC)/core/process/main.c,$(wildcard $(SRC)/core/*/*.c))
CORE_OBJS := $(patsubst $(SRC)/core/%.c,$(OUT)/obj/core/%.o,$(CORE_SRCS))

all: $(addprefix $(OUT)/,$(HARNESSES))

$(OUT)/obj/core/%.o: $(SRC)/core/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(OUT)/libkeelcore-fuzz.a: $(CORE_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(OUT)/obj/creator/%.o: $(SRC)/plugins/creator/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(OUT)/obj/%.o: $(SRC)/tests/fuzz/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(OUT)/fuzz_import: $(OUT)/obj/fuzz_import.o $(CREATOR_OBJS)
	$(CC) $(SAN) -fsanitize=fuzzer $^ $(shell pkg-config --libs jansson) -o $@

$(OUT)/fuzz_%: $(OUT)/obj/fuzz_%.o $(OUT)/libkeelcore-fuzz.a
	$(CC) $(SAN) -fsanitize=fuzzer $^ $(DEP_LIBS) -o $@

-include $(CORE_OBJS:.o=.d) $(CREATOR_OBJS:.o=.d) $(wildcard $(OUT)/obj/*.d)

.PHONY: all
.SECONDARY:
