# The two commands a newcomer needs: `make lab` (a whole VPC and cluster on this
# machine) and `make test` (every suite; needs root). Both install what is missing.
.PHONY: deps lab lab-down test lint shim

deps:
	scripts/install-deps

shim:
	$(MAKE) -C shim

lab: deps
	.venv/bin/vpcctl lab up

lab-down:
	.venv/bin/vpcctl lab down

lint: deps
	.venv/bin/ruff check vpc_cni tests bench
	.venv/bin/ruff format --check vpc_cni tests bench

test: lint
	.venv/bin/pytest -ra tests
