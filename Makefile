# Two entry points (README): `make demo` runs the pipeline on the bundled model, `make test`
# runs the suite; `make zoo` runs the reference zoo. Both create the virtualenv on first use (the dev extra: the training stack
# and pytest). `make test-quick` leaves out the tests marked slow (training, the demo run,
# TensorFlow conversion); `make check-core` checks the core install (no TensorFlow) in a fresh
# venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-serial test-quick test-parallel check-core bench bench-harness zoo zoo-w4 venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qat run models/digits_cnn.toml

# two pytest-xdist workers (TEST_WORKERS=1 for one process); tests sharing the demo run, the
# char_lm slice run or a module's fixtures stay on one worker (tests/conftest.py)
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)

# the suite without the slow tests (no training): the edit-test loop; see README
test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# the same suite on one worker per core (pytest-xdist); see README
test-parallel: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadgroup

# the suite in one process, in order (QAT_TEST_ORDER=reverse make test-serial: backwards)
test-serial: $(STAMP)
	$(PY) -m pytest -q

# `pip install .` with no extras into a temp venv, then inspect / verify --reference /
# android-harness host on artifacts/digits_cnn (made by `make demo` if missing)
check-core:
	PYTHON=$(PYTHON) bash scripts/check_core_install.sh

bench: $(STAMP)
	$(PY) benchmarks/pipeline_bench.py --output artifacts
	$(PY) benchmarks/verifier_bench.py
	$(PY) benchmarks/fuzz_bench.py

bench-harness: $(STAMP)
	$(PY) benchmarks/harness_host_bench.py

# the reference zoo: every zoo model through `qat run`, its variants timed with
# `android-harness host`, artifacts/zoo/zoo.md + zoo.json and the targets (PASS/FAIL);
# `make zoo MODELS=digits_cnn` for some of them (README "Reference zoo")
zoo: $(STAMP)
	$(PY) benchmarks/zoo.py --output artifacts $(if $(MODELS),--models $(MODELS))

# the CNN zoo at 4-bit weights (qat_w4a8 vs the best 4-bit PTQ) and, with MIXED=0.5, mixed
# precision under that budget: artifacts/w4/zoo_w4.md (README "4-bit weights")
zoo-w4: $(STAMP)
	$(PY) benchmarks/zoo_w4.py --output artifacts $(if $(MODELS),--models $(MODELS)) $(if $(MIXED),--mixed $(MIXED))

clean:
	rm -rf artifacts .pytest_cache
