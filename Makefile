# Keel — the two commands a new user needs: `make demo` and `make test`.
# Both install what they need on a fresh Debian 12 machine (as root, through apt), then build.

SWIFT ?= swift
SWIFT_FLAGS ?=
CONFIG ?= release
# Release builds link the Swift runtime and FoundationEssentials statically: only the code a
# program uses is mapped (keeld idles 4 MiB smaller, keel starts without loading shared libraries).
RELEASE_FLAGS ?= --static-swift-stdlib

# Debian packages: building (libxml2), running guests (QEMU), the libvirt oracle (virsh and
# libvirt's cpu_map), the test guest (nasm), the compressors libvirt uses for save images and
# openssl (certificates for the migration tests).
BUILD_PACKAGES := libxml2-dev pkg-config
RUN_PACKAGES := qemu-system-x86 qemu-utils nasm
TEST_PACKAGES := $(RUN_PACKAGES) openssl iproute2 hyperfine libvirt-clients libvirt-daemon-driver-qemu libvirt-daemon-system gzip bzip2 xz-utils lzop zstd python3

.PHONY: all build build-release build-daemon build-bench demo test deps-build deps-demo deps-test bench bench-daemon bench-migrate interop clean

all: build

deps-build:
	@scripts/apt-ensure.sh $(BUILD_PACKAGES)

deps-demo: deps-build
	@scripts/apt-ensure.sh $(RUN_PACKAGES)

deps-test: deps-build
	@scripts/apt-ensure.sh $(TEST_PACKAGES)

build: deps-build
	$(SWIFT) build $(SWIFT_FLAGS)

# The CLI alone: the CPU tools and interop.sh need no daemon.
build-release: deps-build
	$(SWIFT) build -c release $(RELEASE_FLAGS) --product keel $(SWIFT_FLAGS)

# The daemon, which the demo and the load benchmark run.
build-daemon: deps-build
	$(SWIFT) build -c release $(RELEASE_FLAGS) --product keeld $(SWIFT_FLAGS)

build-bench: build-release
	$(SWIFT) build -c release $(RELEASE_FLAGS) --product keel-bench $(SWIFT_FLAGS)

## make demo: the main job on built-in defaults, through a keeld it starts and stops.
demo: deps-demo build-release build-daemon
	@scripts/demo.sh "$$($(SWIFT) build -c release --show-bin-path)"

## make test: every test, against real QEMU and real libvirt.
test: deps-test
	$(SWIFT) build --build-tests $(SWIFT_FLAGS)
	# Serially: the end-to-end suites run real guests, which would starve the timing-sensitive
	# ones on a 2-core machine. Under a watchdog: a hang fails the run naming what still runs.
	SWIFT="$(SWIFT)" scripts/run-tests.sh $(SWIFT_FLAGS)

## make bench: the benchmarks recorded in BENCHMARKS.md.
bench: deps-test build-bench
	@scripts/bench-cpu.sh "$$($(SWIFT) build -c release --show-bin-path)"

## make bench-daemon: keeld with 50 defined and 20 running guests under 200 concurrent requests.
bench-daemon: deps-demo build-release build-daemon
	$(SWIFT) build -c release $(RELEASE_FLAGS) --product keel-load $(SWIFT_FLAGS)
	@benchmarks/daemon-load.sh "$$($(SWIFT) build -c release --show-bin-path)"

## make bench-migrate: live migration of a 256 MiB TCG guest between two keelds on loopback,
## side by side with QEMU's own migration of the same guest (ROUNDS=5).
ROUNDS ?= 5
bench-migrate: deps-demo build-release build-daemon
	@scripts/apt-ensure.sh openssl python3
	$(MAKE) -s -C guest
	@benchmarks/migrate.sh "$$($(SWIFT) build -c release --show-bin-path)" $(ROUNDS)

## make interop: Keel and libvirt restore each other's save images with the guest CPU unchanged.
interop: deps-test build-release
	@scripts/interop.sh "$$($(SWIFT) build -c release --show-bin-path)/keel"

clean:
	rm -rf .build
