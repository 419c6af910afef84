# srpipe: `make demo` runs the whole chain on the embedded sample; `make test` runs the tests. Both install first.
VENV ?= .venv
BIN := $(VENV)/bin
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1

.PHONY: install services demo test lint format clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml containers/install.sh hpc/horovod/build.sh hpc/horovod/cxx17.patch
	SRPIPE_VENV=$(VENV) bash containers/install.sh --dev
	touch $@

demo: install
	$(BIN)/srpipe run configs/demo.toml

test: install services
	$(BIN)/python -m pytest -q -ra --durations=20

# the real one-node Slurm cluster (munge, slurmctld, slurmd, slurmdbd + MariaDB) that the slurm-marked tests use
services:
	@if [ "$$(id -u)" = 0 ]; then bash hpc/slurm-local/install.sh && bash hpc/slurm-local/up.sh; \
	else echo "make services: not root, so no local Slurm cluster; slurm-marked tests will be skipped"; fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-demo:
	rm -rf runs/demo
