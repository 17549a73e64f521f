# palsygan: the two commands of the README.
#   make demo   set up (once) and run the main job on the bundled real sample
#   make test   set up (once) and run the whole test suite
# Both create or reuse .venv; re-running set-up costs seconds (the stamp below), never a horovod build.

VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.palsygan-ready
PYTEST_ARGS ?=

.PHONY: env demo test clean-demo

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/setup_env.sh scripts/build_horovod.sh
	scripts/setup_env.sh $(VENV)
	touch $@

demo: $(STAMP)
	$(PYTHON) jobs/demo.py

test: $(STAMP)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

clean-demo:
	rm -rf output
