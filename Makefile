# The two commands: `make run` (serve locally) and `make test` (every check). Both set up their
# own environment on a fresh machine: a virtualenv in .venv for the project and one in
# .venv-sam for the AWS SAM CLI (kept apart: its pinned dependencies clash with moto's).
# `make test-aws` deploys the stack on a local AWS emulator, installed into .venv-aws.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAM_VENV := .venv-sam
SAM := $(SAM_VENV)/bin/sam
SAM_CLI_VERSION := 1.170.0
AWS_VENV := .venv-aws
# the whole emulator level's limit (it takes about a minute; the install once about another)
AWS_TEST_TIMEOUT := 600
export SAM_CLI_TELEMETRY := 0

# `sam build` for python3.13 needs a working python3.13 on PATH: put pyenv's first when it
# has one (a pyenv shim alone is not enough: it fails unless 3.13 is the selected version).
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $(HOME)/.pyenv)
PY313_BIN := $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/3.13*/bin)))
ifneq ($(PY313_BIN),)
export PATH := $(abspath $(PY313_BIN)):$(PATH)
endif
LOCAL_ARCH := $(if $(filter aarch64 arm64,$(shell uname -m)),arm64,x86_64)
LOCAL_BUILD := .aws-sam/build-local
# pip here warns about optional local package folders that do not exist; hide just that
PIP := python -m pip install --quiet --disable-pip-version-check
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither' || true; }
# the long installs show one progress line (tools/pipprogress.py: packages so far, then the
# time taken) instead of minutes of silence; pip's errors still show
PIP_PROGRESS = python -m pip install --disable-pip-version-check
PROGRESS = 2>&1 | $(PYTHON) tools/pipprogress.py

# `make invoke`, `make events`, `make env-json`: the built functions run the Lambda way on this
# host (tools/lambdahost); ENV_VARS is a file in the format of `sam local invoke --env-vars`
LAMBDAHOST := PYTHONPATH=layers/common:tools $(BIN)/python -m lambdahost

.PHONY: key keys revoke token tokens untoken rotate-webhook-secret help run reset envs test suite test-aws check lint format types unit functional e2e validate asl build build-local bench clean invoke events env-json \
  deploy logs delete

help:
	@echo "make run    serve the gateway on http://127.0.0.1:8000 (HOST/PORT to change); stored"
	@echo "            images, ended jobs, keys and token pools are kept in .local-state/ (RESET=1"
	@echo "            starts empty); the page is at /, and the offline demo provider answers"
	@echo "            requests without a token (/demo/v1/...)"
	@echo "make reset  forget what make run kept (empties .local-state/)"
	@echo "make test   lint, types, sam validate --lint, ASL check, sam build, unit/functional/e2e tests"
	@echo "make test-aws  deploy the stack on a local AWS emulator and use it (tests/aws)"
	@echo "make bench  print benchmark figures (bench/)"
	@echo "make key NAME=alice [QUOTA=50] [MODELS=a,b] [DAYS=30]  issue a gateway key (printed once)"
	@echo "make keys | make revoke NAME=alice                       list / revoke gateway keys"
	@echo "make token PROVIDER=modelscope TOKEN=ms-... | make tokens | make untoken PROVIDER=.. TOKEN=.."
	@echo "make rotate-webhook-secret   new webhook signing secrets for every caller (STACK=name)"
	@echo "           (owner commands: make run's stand-ins while it runs, or a stack with STACK=<name>)"
	@echo "make invoke FUNCTION=<logical id> EVENT=<file> [ENV_VARS=<file>] [STACK=<name>]"
	@echo "            run a built function with an event as Lambda would, without Docker"
	@echo "make events [STACK=<name>] [OUT=<dir>]  seal the job events' provider key"
	@echo "make env-json STACK=<name> [OUT=<file>]  --env-vars JSON for sam local invoke"
	@echo "make deploy build and deploy to AWS (sam deploy --guided; GUIDED=0 reuses the answers)"
	@echo "make logs   follow the deployed API's and jobs' logs [SINCE=<minutes back>]"
	@echo "make delete delete the deployed stack (its image bucket stays: see the message)"

# the layer's packages at the versions its build takes (layers/common/constraints.txt)
$(BIN)/.ready: requirements-dev.txt layers/common/requirements.txt layers/common/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing project dependencies into $(VENV) (the first time: a few minutes)"
	@$(BIN)/$(PIP_PROGRESS) -r requirements-dev.txt -c layers/common/constraints.txt \
	  $(PROGRESS) "project dependencies"
	@$(BIN)/python -c "import starlette, uvicorn, httpx, moto, openai, pytest, xdist"
	@touch $@

# asl-validator (npm, pinned in package.json / package-lock.json) checks the ASL files offline
ASL_VALIDATOR := node_modules/.bin/asl-validator
$(ASL_VALIDATOR): package.json package-lock.json
	@command -v npm >/dev/null || { echo "the ASL check needs npm (Node.js)"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(SAM_VENV)/.ready:
	@test -x $(SAM_VENV)/bin/python || $(PYTHON) -m venv $(SAM_VENV)
	@echo "installing AWS SAM CLI $(SAM_CLI_VERSION) into $(SAM_VENV) (the first time: a few minutes)"
	@$(SAM_VENV)/bin/$(PIP_PROGRESS) aws-sam-cli==$(SAM_CLI_VERSION) $(PROGRESS) "AWS SAM CLI"
	@$(SAM) --version
	@touch $@

# localstack-core (tests/aws/requirements.txt, versions locked by constraints.txt); its code needs
# Python >= 3.12: the python3.13 put on PATH above. Installed without compiling its ~10,000
# modules (--no-compile): the emulator compiles the ones it imports as it imports them, while the
# other tests run, not while they wait for their own environments
$(AWS_VENV)/.ready: tests/aws/requirements.txt tests/aws/constraints.txt
	@python3.13 -c pass 2>/dev/null || { echo "the AWS emulator needs python3.13 on PATH (pyenv install 3.13)"; exit 1; }
	@test -x $(AWS_VENV)/bin/python || python3.13 -m venv $(AWS_VENV)
	@echo "installing the AWS emulator (localstack-core) into $(AWS_VENV)"
	@$(AWS_VENV)/bin/$(PIP) --no-compile -r tests/aws/requirements.txt -c tests/aws/constraints.txt $(QUIET_PIP)
	@$(AWS_VENV)/bin/python -c "import localstack.runtime.main"
	@touch $@

# every environment the checks and tests use; independent of one another, so `make -j4 -O envs`
# makes them at once (as .ci/run's `make -j8`), each one's output shown whole when it is done
envs: $(BIN)/.ready $(SAM_VENV)/.ready $(AWS_VENV)/.ready $(ASL_VALIDATOR)

# make run keeps stored images and ended jobs in .local-state/ (imagegw.infra.localstate)
LOCAL_STATE := .local-state

run: $(BIN)/.ready
	$(if $(RESET),rm -rf $(LOCAL_STATE))
	PYTHONPATH=layers/common $(BIN)/python -m imagegw.frontends.local

reset:
	rm -rf $(LOCAL_STATE)

lint: $(BIN)/.ready
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/.ready
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

types: $(BIN)/.ready
	$(BIN)/mypy
	@# the task functions, one at a time (each is a module named app)
	@for f in functions/job_*/app.py; do $(BIN)/mypy --no-error-summary $$f; done

validate: $(SAM_VENV)/.ready
	$(SAM) validate --lint

asl: $(BIN)/.ready $(ASL_VALIDATOR)
	@$(BIN)/python tools/batchasl --check || { echo "statemachine/image_batch.asl.json is stale: python tools/batchasl"; exit 1; }
	$(ASL_VALIDATOR) --json-path statemachine/image_job.asl.json --json-path statemachine/image_batch.asl.json

# `sam build` for the Architecture the stack is deployed with (samconfig.toml's, as `sam deploy
# --guided` saved it; else the template's default), so the layer's compiled wheels fit it
BUILT_ARCH := .aws-sam/build.architecture
# the two builds share .aws-sam's build graph (build.toml) and cache, so they never run at once:
# when `make test` asks for both, this one starts once build-local is made (under `make -j` too)
build: $(BIN)/.ready $(SAM_VENV)/.ready | $(if $(filter test,$(MAKECMDGOALS)),build-local)
	@python3.13 -c pass 2>/dev/null || { echo "sam build needs python3.13 on PATH (pyenv install 3.13)"; exit 1; }
	@arch=$$($(STACKTOOL) architecture); echo "sam build for Architecture=$$arch"; \
	  $(SAM) build --parameter-overrides Architecture=$$arch; echo $$arch > $(BUILT_ARCH)

# the same build for this machine's architecture, which the deployed-build test boots
build-local: $(SAM_VENV)/.ready
	$(SAM) build --build-dir $(LOCAL_BUILD) --parameter-overrides Architecture=$(LOCAL_ARCH)

# the tests run on TEST_WORKERS processes (pytest-xdist; TEST_WORKERS=0: in this one), a test
# file on one worker from start to end: its module-scoped servers start once and its tests keep
# their order (tests/fuzz's last test sums up the others). Every test takes free ports and its
# own temporary folders, so the workers share nothing but the build they read. The files are
# handed out in collection order (--no-loadscope-reorder, not most tests first): the long
# browser and end-to-end files start first, and the many short unit files fill the end.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest \
  $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

unit: $(BIN)/.ready
	$(PYTEST) tests/unit

functional: $(BIN)/.ready
	$(PYTEST) tests/functional

e2e: $(BIN)/.ready build-local
	SAM_LOCAL_BUILD_DIR=$(LOCAL_BUILD) $(PYTEST) tests/e2e

check: lint types validate asl

# pytest on every level but the emulator's (tests/aws)
suite: $(BIN)/.ready build-local
	SAM_LOCAL_BUILD_DIR=$(LOCAL_BUILD) $(PYTEST) --ignore=tests/aws

# one after another (check, build-local, build, then the tests); `make -j test` runs them at
# once (.ci/run), the tests as soon as the build they boot (build-local) is made
test: check build suite

# the stack for this machine deployed with `sam deploy` on the emulator, and used (tests/aws);
# the tests start and stop the emulator themselves
test-aws: $(BIN)/.ready $(AWS_VENV)/.ready build-local
	SAM_LOCAL_BUILD_DIR=$(LOCAL_BUILD) AWS_EMULATOR_PYTHON=$(AWS_VENV)/bin/python SAM_CLI=$(SAM) \
	  timeout $(AWS_TEST_TIMEOUT) $(BIN)/pytest tests/aws

# the build runs first, its output on stderr: stdout is the function's answer alone
invoke: $(BIN)/.ready
	@test -n "$(FUNCTION)" -a -n "$(EVENT)" || { echo "usage: make invoke FUNCTION=<logical id> EVENT=<file> [ENV_VARS=<file>] [STACK=<name>]" >&2; exit 2; }
	@$(MAKE) --no-print-directory build-local >&2
	@$(LAMBDAHOST) invoke --build-dir $(LOCAL_BUILD) --function '$(FUNCTION)' --event '$(EVENT)' \
	  $(if $(ENV_VARS),--env-vars '$(ENV_VARS)') $(if $(STACK),--stack '$(STACK)')

# PROVIDER_KEY (from the environment) seals your own token instead of the sample one
events: $(BIN)/.ready
	@$(LAMBDAHOST) events $(if $(STACK),--stack '$(STACK)') $(if $(OUT),--out '$(OUT)')

env-json: $(BIN)/.ready
	@test -n "$(STACK)" || { echo "usage: make env-json STACK=<name> [OUT=<file>]" >&2; exit 2; }
	@$(LAMBDAHOST) env-json --stack '$(STACK)' $(if $(OUT),--out '$(OUT)')

# the cold-start and concurrency benchmarks boot the build-local output as Lambda boots it
# the seed-shaped reference of `python -m bench versus` runs in its own venv (FastAPI pins Starlette)
# on the interpreter the gateway runs on (Lambda's python3.13), made again when it is another
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.ready-3.13: bench/seedref/requirements.txt
	@python3.13 -c pass 2>/dev/null || { echo "the benchmarks need python3.13 on PATH (pyenv install 3.13)"; exit 1; }
	@$(BENCH_VENV)/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null \
	  || { rm -rf $(BENCH_VENV); python3.13 -m venv $(BENCH_VENV); }
	@$(BENCH_VENV)/bin/$(PIP) -r bench/seedref/requirements.txt $(QUIET_PIP)
	@touch $@

bench: $(BIN)/.ready $(BENCH_VENV)/.ready-3.13 build-local
	PYTHONPATH=layers/common:tests:tools $(BIN)/python -m bench

# Deploy and operate (README "Deploy and operate"): the stack's name and region are
# samconfig.toml's, which `sam deploy --guided` writes. `make deploy` first stops with a how-to
# when boto3 finds no AWS credentials (or AWS cannot be reached), before the build; it builds
# with python3.13 (put on PATH above) for the saved Architecture. The guided questions run as
# `sam deploy --guided --no-execute-changeset`: they save the answers (SAM saves them before it
# packages) and show a change set that is never executed (a first one leaves the stack in
# REVIEW_IN_PROGRESS, which the next `sam deploy` creates as a new stack). It stops there when
# the saved parameters cannot work together (`stacktool parameters`: a GenerationTimeout not
# below FunctionTimeout, which the template cannot compare). When the answers changed the
# Architecture it builds again; then the one deploy that changes anything, `sam deploy` with
# the saved answers, always ships a build for the stack's Architecture. Last it prints the
# addresses to use.
STACKTOOL := PYTHONPATH=layers/common:tools $(BIN)/python -m stacktool
GUIDED ?= 1
PREVIEW_NOTE := The guided questions first: their change set is only shown. The deploy follows, \
  built for the Architecture you choose.

deploy: $(BIN)/.ready $(SAM_VENV)/.ready
	@$(STACKTOOL) credentials --for deploy
	@$(MAKE) --no-print-directory build
	@$(if $(filter 1,$(GUIDED)),echo "$(PREVIEW_NOTE)")
	$(if $(filter 1,$(GUIDED)),$(SAM) deploy --guided --no-execute-changeset)
	@$(STACKTOOL) parameters
	@$(STACKTOOL) architecture --built "$$(cat $(BUILT_ARCH))" || $(MAKE) --no-print-directory build
	$(SAM) deploy
	@$(STACKTOOL) outputs

logs: $(BIN)/.ready
	@$(STACKTOOL) logs $(if $(SINCE),--since '$(SINCE)')

# a stack whose first deploy failed (ROLLBACK_COMPLETE, no outputs) is deleted like any other
delete: $(BIN)/.ready $(SAM_VENV)/.ready
	@$(STACKTOOL) credentials --for delete
	@$(STACKTOOL) bucket
	$(SAM) delete

# owner commands (README "Sharing a deployment"): against `make run` while it runs, or against a
# deployed stack with STACK=<name> (the caller's AWS credentials); TOKEN=- reads it from stdin
ADMIN := PYTHONPATH=layers/common STACK="$(STACK)" $(BIN)/python -m imagegw.frontends.admin
key: $(BIN)/.ready
	@test -n "$(NAME)" || { echo "usage: make key NAME=alice [QUOTA=50] [MODELS=a,b] [DAYS=30]"; exit 2; }
	@$(ADMIN) key "$(NAME)" $(if $(QUOTA),--quota "$(QUOTA)") $(if $(MODELS),--models "$(MODELS)") \
	  $(if $(PROVIDERS),--providers "$(PROVIDERS)") $(if $(DAYS),--days "$(DAYS)")

keys: $(BIN)/.ready
	@$(ADMIN) keys

revoke: $(BIN)/.ready
	@test -n "$(NAME)" || { echo "usage: make revoke NAME=alice"; exit 2; }
	@$(ADMIN) revoke "$(NAME)"

token: $(BIN)/.ready
	@test -n "$(PROVIDER)" -a -n "$(TOKEN)" || { echo "usage: make token PROVIDER=modelscope TOKEN=ms-..."; exit 2; }
	@$(ADMIN) token "$(PROVIDER)" "$(TOKEN)"

tokens: $(BIN)/.ready
	@$(ADMIN) tokens

untoken: $(BIN)/.ready
	@test -n "$(PROVIDER)" -a -n "$(TOKEN)" || { echo "usage: make untoken PROVIDER=modelscope TOKEN=ms-..."; exit 2; }
	@$(ADMIN) untoken "$(PROVIDER)" "$(TOKEN)"

rotate-webhook-secret: $(BIN)/.ready
	@$(ADMIN) rotate-webhook-secret

clean:
	rm -rf .aws-sam .aws-emulator .mypy_cache .ruff_cache node_modules
