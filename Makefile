# Two entry points (README): `make demo` runs the pipeline on the bundled model, `make test`
# runs the suite. Both create the virtualenv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-parallel bench bench-harness venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qat run models/digits_cnn.toml

test: $(STAMP)
	$(PY) -m pytest -q

# the same suite on one worker per core (pytest-xdist); see README
test-parallel: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadgroup

bench: $(STAMP)
	$(PY) benchmarks/pipeline_bench.py --output artifacts
	$(PY) benchmarks/verifier_bench.py
	$(PY) benchmarks/fuzz_bench.py

bench-harness: $(STAMP)
	$(PY) benchmarks/harness_host_bench.py

clean:
	rm -rf artifacts .pytest_cache
