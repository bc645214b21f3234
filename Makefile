# The two commands a newcomer needs:  `make run`  and  `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends

# Debian packages: building libvirt-python, real guests (QEMU TCG, qemu-img), the demo image, the browser console's
# noVNC (npm only when none is on the PATH: NodeSource's nodejs brings its own, which Debian's npm conflicts with),
# the browser tests, and the console clients of the native-client test (virt-viewer, FreeRDP, Xvfb, ImageMagick).
RUN_PACKAGES := python3-venv python3-dev gcc pkg-config libvirt-dev libvirt-daemon-system libvirt-clients \
	qemu-system-x86 qemu-utils dnsmasq-base cpio busybox-static e2fsprogs nodejs \
	$(shell command -v npm >/dev/null || echo npm)
TEST_PACKAGES := $(RUN_PACKAGES) postgresql postgresql-client redis-server redis-tools iproute2 \
	chromium chromium-driver virt-viewer xvfb freerdp2-x11 imagemagick

.PHONY: run test test-parallel screenshots venv sysdeps-run sysdeps-test services lint clean-data help

help:
	@echo "make run   - install what is needed and run the manager on the embedded default (SQLite)"
	@echo "make test  - install system packages, start Postgres/Redis/libvirtd, run the whole test suite"

define ensure_packages
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing: $$missing"; $(SUDO) apt-get update -qq && $(APT) $$missing >/dev/null; fi
endef

sysdeps-run:
	$(call ensure_packages,$(RUN_PACKAGES))

sysdeps-test:
	$(call ensure_packages,$(TEST_PACKAGES))

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[node,test]'
	@touch $@

# The browser console's one third-party front-end package (noVNC), pinned by the lock file; served as-is.
NPM_DIR := manager/web/vendor
$(NPM_DIR)/node_modules/.installed: $(NPM_DIR)/package.json $(NPM_DIR)/package-lock.json
	cd $(NPM_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

venv: $(VENV)/.installed $(NPM_DIR)/node_modules/.installed

services:
	bash scripts/services.sh postgres redis libvirtd

run: sysdeps-run venv
	@bash scripts/services.sh libvirtd || echo "libvirtd is not usable here: the demo uses a libvirt test-driver host"
	$(VENV)/bin/vdi demo
	$(VENV)/bin/vdi serve

# One pytest process (a run with no test fails: pytest exits 5). `make test-parallel` runs the two shards of
# tests/shards.py at once: faster, but the load of both on 2 cores still makes some real-guest tests miss their
# timing (docs/DEVELOPING.md, Tests).
test: sysdeps-test venv services
	$(PY) -m pytest -q -p no:cacheprovider --durations=30

test-parallel: sysdeps-test venv services
	PY=$(PY) bash scripts/run-tests.sh

# The README's screenshots, made by a script against the real manager (never by hand). They are not committed (no
# generated files or images in git): run this once after a checkout and the README's images appear.
screenshots: sysdeps-test venv services
	$(PY) scripts/screenshots.py --out docs/screenshots

clean-data:
	rm -rf var
