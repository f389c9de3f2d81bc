# Every target bootstraps itself (Python >= 3.12, uv, .venv from uv.lock) first.
.PHONY: run test check bench schemas bootstrap

BIN := .venv/bin

bootstrap:
	@./scripts/bootstrap.sh

run: bootstrap
	$(BIN)/zapflow up

check: bootstrap
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: check
	$(BIN)/pytest

bench: bootstrap
	$(BIN)/python -m benchmarks

schemas: bootstrap
	$(BIN)/zapflow schemas export
