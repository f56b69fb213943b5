# The two commands a new user needs: `make demo` and `make test`.
# Both create or refresh .venv idempotently: torch==2.13.0 first (a CPU build on a CPU
# machine; a loose `torch` with nothing installed would pull a multi-GB CUDA build), then
# the package, whose looser torch requirement is then already satisfied.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0

.PHONY: demo test lint format install clean proto serve

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	mkdir -p demo
	$(VENV)/bin/ctrlgan sample mnist --class 0-9 --n 8 --seed 0 -o demo/mnist_grid.png
	$(VENV)/bin/ctrlgan interpolate mnist --from 5:3 --to 9:7 --steps 8 -o demo/interpolation.png
	$(VENV)/bin/ctrlgan edit mnist --class 3 --seeds 0-7 --increase thickness --keep slant,size -o demo/edit.png
	$(VENV)/bin/ctrlgan bench mnist --batch-sizes 1,64 --rounds 30 --no-compile --quiet

lint: $(STAMP)
	$(VENV)/bin/ruff check ctrlgan tests benchmarks
	$(VENV)/bin/ruff format --check ctrlgan tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format ctrlgan tests benchmarks
	$(VENV)/bin/ruff check --fix ctrlgan tests benchmarks

test: lint
	$(VENV)/bin/python -m pytest -q

# The gRPC messages: proto/inference.proto -> the descriptor set the server loads (committed;
# tests/serve/test_proto.py checks it is current).
proto: $(STAMP)
	cd ctrlgan/serve/proto && ../../../$(PY) -m grpc_tools.protoc -I. --descriptor_set_out=inference.desc inference.proto

serve: $(STAMP)
	$(VENV)/bin/ctrlgan serve mnist

clean:
	rm -rf $(VENV) demo build *.egg-info
