# Everything a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
REF_VENV := .venv-ref
PY := $(VENV)/bin/python
REF_PY := $(REF_VENV)/bin/python
# Pinned versions of the whole dependency tree: reproducible installs, and no
# slow resolver backtracking (fast_dataindex pins numpy<=1.26.4).
CONSTRAINTS := requirements/constraints.txt

MODEL ?= OpenGVLab/InternVL2-1B
IMAGE ?= paddlemix/demo_images/examples_image1.jpg
TEXT ?= Please describe this image in detail.
PYTEST_ARGS ?=

.PHONY: install install-test reference browser qemu simde demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) paddlepaddle -e .
	touch $@

install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[test]"
	touch $@

# The PyTorch reference for parity tests, in its own venv (torch must not sit
# next to paddleformers). torch==2.13.0 installs the CPU wheel from local disk.
reference: $(REF_VENV)/.installed

$(REF_VENV)/.installed: requirements/reference.txt
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_PY) -m pip install --quiet --upgrade pip
	$(REF_PY) -m pip install --quiet -r requirements/reference.txt
	touch $@

# Debian's chromium for the chat-page test (Playwright drives it; no browser is downloaded).
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Debian's qemu-user: tests/test_portability.py runs the model on an emulated CPU without AVX-512.
qemu:
	@command -v qemu-x86_64 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user; }

# Debian's SIMDe headers: tests/test_native_kernels.py runs the AVX-512 kernel bodies on CPUs without it.
simde:
	@test -f /usr/include/simde/x86/avx512.h || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libsimde-dev; }

demo: install
	$(PY) paddlemix/examples/internvl2/chat_demo.py \
		--model_name_or_path $(MODEL) --image_path $(IMAGE) --text "$(TEXT)"

test: install-test reference browser qemu simde
	PADDLEMIX_REF_PYTHON=$(CURDIR)/$(REF_PY) PADDLEMIX_REQUIRE_REF=1 PADDLEMIX_REQUIRE_QEMU=1 PADDLEMIX_REQUIRE_SIMDE=1 \
		$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(REF_VENV) *.egg-info .pytest_cache
