# petclf — `make train` fine-tunes on Oxford-IIIT Pets; `make test` builds .venv from nothing and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: train test demo lint bench browser clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# hints then quote what the user typed (make train ARGS="--data DIR"), and the next commands the venv's petclf
RUN_VIA = PETCLF_CMD=$(BIN)/petclf PETCLF_VIA_MAKE

train: $(STAMP)  ## fine-tune the default recipe on Pets (downloads it to data/ if missing)
	$(RUN_VIA)=train $(BIN)/petclf train $(ARGS)

demo: $(STAMP)  ## the whole pipeline offline on CPU: synthetic data, train, export, report
	$(RUN_VIA)=demo $(BIN)/petclf demo $(ARGS)

browser:  ## Debian's Chromium for the browser tests (never `playwright install`)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "warning: could not install chromium; browser tests will be skipped"; }

test: $(STAMP) browser
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check petclf tests benchmarks tools

bench: $(STAMP)  ## the benchmarks are a package: each runs from here as `python -m benchmarks.<name>`
	$(BIN)/python -m benchmarks.bench_train
	$(BIN)/python -m benchmarks.bench_predict
	$(BIN)/python -m benchmarks.bench_cold_start

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
