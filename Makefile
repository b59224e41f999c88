# The two commands: `make run` (install + serve) and `make test` (install +
# the whole test suite). Both install idempotently first.
VENV    ?= .venv
HOST    ?= 127.0.0.1
PORT    ?= 5000
PYTEST_ARGS ?=


.PHONY: setup setup-dev run test test-fast test-gpu-build gpu-bundle fuzz bench clean worker soak

setup:
	@bash scripts/setup.sh

run: setup
	HOST=$(HOST) PORT=$(PORT) exec $(VENV)/bin/flask --app wsgi serve

# A Celery worker for this host (LAYERBENCH_QUEUE=celery): README "Several
# machines" lists the environment it needs (broker, database, jobs dir, GPUs).
worker: setup
	exec $(VENV)/bin/python -m app.worker.celery_app

# Four pytest workers on the two cores (most tests wait on real processes
# much of the time; measured: -n 2 slower, -n 6 slower), one test module
# each at a time (module fixtures, such as a trained model shared by a
# module's tests, are built once), longest modules first (conftest's
# SLOW_FIRST; xdist would order them by test count). XDIST= make test runs serially.
XDIST ?= -n 4 --dist loadfile --no-loadscope-reorder

# The test tools too (requirements-dev.txt; `make run` leaves them out).
setup-dev:
	@DEV=1 bash scripts/setup.sh

test: setup-dev
	$(VENV)/bin/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The inner loop: everything but the slow end-to-end tests (marked `slow`).
test-fast: setup-dev
	$(VENV)/bin/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

# The CUDA build of Caffe in its own venv, then the whole suite with it: on a
# machine without a GPU everything must still pass in CPU mode.
# Schemathesis against a live server, longer than `make test`'s bounded run
# and with a fresh seed each time: FUZZ_EXAMPLES=500 make fuzz.
fuzz: setup-dev
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-200} FUZZ_SEED= $(VENV)/bin/python -m pytest tests/test_fuzz_api.py $(PYTEST_ARGS)

test-gpu-build:
	VENV=.venv-gpu CAFFE_GPU=1 DEV=1 bash scripts/setup.sh
	.venv-gpu/bin/python -m pytest $(PYTEST_ARGS)
	bash scripts/gpu_bundle.sh
	.venv-gpu/bin/python -m pytest tests_gpu $(PYTEST_ARGS)

# The relocatable bundle for the lent GPU machine (docs/GPU.md): the CUDA
# pycaffe for sm_90, Python 3.11, the service's deps, bwrap, the app.
gpu-bundle: setup
	bash scripts/gpu_bundle.sh

bench: setup
	$(VENV)/bin/python -m bench

# The chaos soak (docs/OPERATIONS.md, "The chaos soak"): the real service
# under three users' jobs while trainers and the worker are SIGKILLed and
# the jobs volume fills; not part of `make test`. SOAK_SECONDS=120 make soak
# for a short one (default 600).
soak: setup
	SOAK_SECONDS=$${SOAK_SECONDS:-600} $(VENV)/bin/python scripts/soak.py

clean:
	rm -rf $(VENV) .venv-gpu instance .pytest_cache
