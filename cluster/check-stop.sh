#!/bin/bash
# A check by hand (not in `make test`: `make stop` ends every Ray on this host): `make deploy`,
# wait until the graph answers, `make stop`, then count vLLM processes left (must be 0).
cd "$(dirname "$0")/.."
make deploy > "${TMPDIR:-/tmp}/deploy.log" 2>&1 || { echo "deploy failed"; tail -20 "${TMPDIR:-/tmp}/deploy.log"; exit 1; }
for i in $(seq 1 90); do
  code=$(curl -s -o /dev/null -w "%{http_code}" -X POST http://127.0.0.1:8000/v1/chat/completions \
    -H 'content-type: application/json' \
    -d '{"model":"smollm2-135m-instruct","max_tokens":2,"messages":[{"role":"user","content":"Hi"}]}')
  [ "$code" = "200" ] && break
  sleep 2
done
echo "answered: $code after ~$((i*2)) s"
echo "vLLM processes before stop: $(pgrep -f '^VLLM::' | wc -l)"
make stop > "${TMPDIR:-/tmp}/stop.log" 2>&1
for t in 1 3 5 10; do sleep $t; echo "vLLM processes ${t}s-step after make stop: $(pgrep -f '^VLLM::' | wc -l) $(pgrep -af '^VLLM::' | head -3)"; done
