# srpipe: `make demo` runs the whole chain on the embedded sample; `make test` runs the tests. Both install first.
VENV ?= .venv
BIN := $(VENV)/bin
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1

.PHONY: install install-core services demo pretrain test lint format clean-demo

# everything, with the patched Horovod build (~6 min on a fresh machine): tests, lint, cluster training
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml containers/install.sh hpc/horovod/build.sh hpc/horovod/cxx17.patch
	SRPIPE_VENV=$(VENV) bash containers/install.sh --dev
	touch $@ $(VENV)/.installed-core

# srpipe without Horovod (training runs as one process): all the demo needs
install-core: $(VENV)/.installed-core

$(VENV)/.installed-core: pyproject.toml containers/install.sh
	SRPIPE_VENV=$(VENV) bash containers/install.sh --no-horovod
	touch $@

demo: install-core
	$(BIN)/srpipe run configs/demo.toml

# the packaged weights srpipe/weights/sample-x4.pt: the demo's model trained 30 min on the sample scene outside the
# demo's AOI (configs/pretrain.toml), then exported with its recipe and scores (srpipe/weights/sample-x4.json)
pretrain: install-core
	$(BIN)/srpipe run configs/pretrain.toml
	$(BIN)/python -m srpipe.models.pretrained runs/pretrain srpipe/weights/sample-x4.pt

# every test's duration goes to $(TEST_REPORT) (JUnit XML; untracked): `python tests/slowest.py` lists the slowest
TEST_REPORT ?= test-report.xml
test: install services
	$(BIN)/python -m pytest -q -ra --durations=20 --junitxml=$(TEST_REPORT)

# the real Slurm clusters that the slurm-marked tests use: the one-node default (munge, slurmctld, slurmd,
# slurmdbd + MariaDB), then the two-node one (SLURM_CONF=/etc/slurm-2node/slurm.conf; hosts srn1, srn2 in
# network namespaces) that shares its munge and slurmdbd
services:
	@if [ "$$(id -u)" = 0 ]; then bash hpc/slurm-local/install.sh && bash hpc/slurm-local/up.sh \
	  && bash hpc/slurm-local/up.sh --nodes 2; \
	else echo "make services: not root, so no local Slurm clusters; slurm-marked tests will be skipped"; fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-demo:
	rm -rf runs/demo
