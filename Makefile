# The two commands: `make run` (install + serve) and `make test` (install +
# the whole test suite). Both install idempotently first.
VENV    ?= .venv
HOST    ?= 127.0.0.1
PORT    ?= 5000
PYTEST_ARGS ?=

.PHONY: setup run test bench clean

setup:
	@bash scripts/setup.sh

run: setup
	HOST=$(HOST) PORT=$(PORT) exec $(VENV)/bin/flask --app wsgi serve

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) instance .pytest_cache
