# The course's two entry points: `make lab` opens the course, `make test` runs the test suite.
# Both set everything up first (a virtual environment with the pinned packages, the dataset).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LAB_IP ?= 127.0.0.1
PORT   ?= 8888
# Jupyter refuses to run as root unless told to (containers and CI boxes often are root).
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: setup lab test test-full release data clean browser sandbox slurm gpu-proof

setup: $(VENV)/.setup-stamp sandbox

# The grading sandbox: bubblewrap, and (as root) the unprivileged user that sandboxed code runs as.
# Without root, bubblewrap uses a user namespace of your own user; `course grade` says what is missing.
sandbox:
	@command -v bwrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y bubblewrap iproute2 >/dev/null 2>&1 || { apt-get update >/dev/null && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y bubblewrap iproute2 >/dev/null; }) \
	      || echo "Could not install bubblewrap: checks run unsandboxed; course grade needs --unsafe-no-sandbox."; \
	  else \
	    echo "bubblewrap is missing (sudo apt-get install bubblewrap): checks run unsandboxed;"; \
	    echo "course grade refuses to grade without it unless given --unsafe-no-sandbox."; \
	  fi; }
	@if [ "$$(id -u)" = 0 ] && ! id course-sandbox >/dev/null 2>&1; then \
	  useradd --system --no-create-home --shell /usr/sbin/nologin course-sandbox; fi

$(VENV)/.setup-stamp: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m autograder.install   # the grader's files as installed: course grade verifies them
	touch $@

data: setup
	$(BIN)/course data

lab: data
	@echo "Opening JupyterLab on release/ (the URL with its token is printed below)."
	$(BIN)/jupyter lab --notebook-dir=release --ip=$(LAB_IP) --port=$(PORT) --no-browser $(ALLOW_ROOT)

release: setup
	$(BIN)/course release

# Headless Chromium (Debian's package) for the real-browser test, installed when missing (needs root).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
	      || echo "Could not install Chromium: tests/test_browser.py will be skipped."; \
	  else \
	    echo "Chromium is missing and installing it needs root and apt-get (sudo apt-get install chromium):"; \
	    echo "tests/test_browser.py will be skipped."; \
	  fi; }

# Slurm (Debian's slurmctld, slurmd, client and munge) for the tests that grade a class through a real, local
# one-node Slurm (tests/slurm_cluster.py starts and stops it); installed when missing (needs root), else skipped.
slurm:
	@command -v sbatch >/dev/null && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurmctld slurmd slurm-client \
	       munge >/dev/null 2>&1 || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y \
	       --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }) \
	      || echo "Could not install Slurm: the Slurm tests will be skipped."; \
	  else \
	    echo "Slurm is missing and installing it needs root and apt-get: the Slurm tests will be skipped."; \
	  fi; }

# Correctness tests run two at a time, a test file per worker (its module fixtures are made once; pytest-xdist's
# xdist_group marks do not group with pytest 9); tests that time a speed-up run alone afterwards. Notebooks run in
# the smoke configuration (tests/test_notebooks_run.py).
test: setup browser slurm
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not timing"
	$(BIN)/python -m pytest -p no:xdist -m timing || [ $$? -eq 5 ]  # 5: no timing tests selected

# The same, with every notebook in its full configuration (what a student runs; the speed-timing ones alone).
test-full: setup browser slurm
	COURSE_TEST_FULL=1 $(BIN)/python -m pytest -n 2 --dist loadfile -m "not timing"
	COURSE_TEST_FULL=1 $(BIN)/python -m pytest -p no:xdist -m timing || [ $$? -eq 5 ]

# Prove the course on a GPU host (set-up included): every check with the solutions and typical mistakes, the measured
# figures and every notebook, at most 8 minutes; everything lands in gpu-proof/ (summary.json, logs, notebooks).
gpu-proof: setup
	$(BIN)/course data --source synthetic
	$(BIN)/course gpu-proof --out gpu-proof

clean:
	rm -rf $(VENV) .pytest_cache
