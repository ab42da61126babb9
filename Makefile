# The two commands of the README: `make demo` and `make test`. Both set up everything they need
# on a fresh machine (the Python virtual environment with torch 2.13.0 that provides libtorch).

VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
CARGO ?= cargo
# One profile for tests, examples and benches, so nothing is compiled twice.
PROFILE := --release

.PHONY: demo test venv build bench embedded check-decode doc clean-venv

venv:
	@bash scripts/setup-venv.sh

build: venv
	$(CARGO) build $(PROFILE) --features testing --all-targets

demo: venv
	$(CARGO) run $(PROFILE) --example decode -- --prompt-file examples/prompts.txt --k 4 --max-new-tokens 48 --compare-greedy

test: venv
	$(CARGO) test $(PROFILE) --features testing --all-targets
	$(CARGO) test $(PROFILE) --features testing --doc
	$(MAKE) --no-print-directory check-decode

# The `decode` example's JSON interface: identical to greedy, one call per iteration plus the prompt.
check-decode: venv
	$(CARGO) build $(PROFILE) --example decode
	bash scripts/check-decode.sh

bench: venv
	$(CARGO) bench --features testing --bench decode

# Regenerates the embedded default model (seeded; the same bytes every time).
embedded: venv
	$(CARGO) run $(PROFILE) --example init_embedded

doc:
	$(CARGO) doc --no-deps --features doc-only,testing
