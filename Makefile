# Thin entry points; the work is in scripts/. `make` alone lists them.
.PHONY: help test unit lint molecule demo demo-down bench wheelhouse bootstrap
.DEFAULT_GOAL := help

help:            ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):[^#]*## /  make \1\t/' | expand -t 22

test:            ## everything CI runs: lint, pytest, every Molecule scenario (installs what is missing)
	bash scripts/test.sh all

unit:            ## pytest for the programs only (no Docker)
	bash scripts/test.sh unit

lint:            ## yamllint, ansible-lint (production profile), ruff
	bash scripts/test.sh lint

molecule:        ## Molecule scenarios only; one with: make molecule SCENARIO=default
	bash scripts/test.sh molecule $(SCENARIO)

demo:            ## deploy into a local systemd container and show /funding/health and a symbol
	bash scripts/demo.sh up

demo-down:       ## remove the demo container
	bash scripts/demo.sh down

bench:           ## benchmarks against the seed design (prints a table)
	bash scripts/bench.sh

wheelhouse:      ## runtime wheels for offline installs, in .cache/wheelhouse
	bash -c 'source scripts/bootstrap.sh && ensure_venv && ensure_wheelhouse'

bootstrap:       ## virtualenv, Docker engine, test images, wheelhouse
	bash scripts/bootstrap.sh
