#!/usr/bin/env bash
# The closed-loop scenarios against a real kind cluster (needs Docker, kind, and a host
# with cgroup v2). Builds and loads the images, installs memwarden with its chart and a
# small Prometheus/Alertmanager, then runs the SAME pytest scenarios CI runs on the node
# simulator (tests/e2e, MEMWARDEN_E2E_TARGET=kind), plus the checks only a real node can
# make (tests/e2e/test_kind_cgroups.py: memory.min/low/high vs `memwarden explain`).
# The images are `make image`'s OCI archives (no Dockerfile, no docker build): loaded with
# `kind load image-archive`, under the names the chart uses by default.
#
#   e2e/kind/run.sh            # create the cluster if needed, run, keep it
#   KEEP=0 e2e/kind/run.sh     # ... and delete the cluster afterwards
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$repo/e2e/kind"
cluster=memwarden-e2e
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"; [[ ${KEEP:-1} == 1 ]] || kind delete cluster --name "$cluster"' EXIT

for tool in docker kind; do
    command -v "$tool" >/dev/null || { echo "e2e/kind: $tool is required" >&2; exit 2; }
done
bash "$repo/hack/bootstrap.sh"
helm="$(bash "$repo/hack/helm/build.sh")"
kubectl="$repo/.venv/bin/kubectl"

echo "==> images (make image: OCI archives, built without Docker; root for mmdebstrap)"
build=(python3 "$repo/hack/image/build.py")
[[ $(id -u) == 0 ]] || build=(sudo --preserve-env=MEMWARDEN_CACHE "${build[@]}")
"${build[@]}"
declare -A images archives
while read -r reference archive; do
    name="${reference##*/}"; name="${name%%:*}"
    images[$name]="$reference"; archives[$name]="$archive"
done < <(python3 "$repo/hack/image/build.py" --print-names)

echo "==> cluster"
kind get clusters | grep -qx "$cluster" || kind create cluster --config "$here/kind-config.yaml"
export KUBECONFIG="$work/kubeconfig"
kind get kubeconfig --name "$cluster" > "$KUBECONFIG"
for name in memwarden memwarden-toolbox leaky; do
    kind load image-archive --name "$cluster" "${archives[$name]}"
done

echo "==> memwarden (chart)"
"$helm" upgrade --install memwarden "$repo/charts/memwarden" --namespace memwarden-system \
    --create-namespace --values "$here/values.yaml" --wait --timeout 5m
token="$("$kubectl" -n memwarden-system get secret memwarden-alertmanager \
    -o jsonpath='{.data.token}' | base64 -d)"
# The HTTP API serves the webhook's self-made certificate: trust its CA (the public half).
"$kubectl" -n memwarden-system get secret memwarden-webhook-ca \
    -o jsonpath='{.data.ca\.crt}' | base64 -d > "$work/evidence-ca.crt"

echo "==> Prometheus and Alertmanager"
rules="$("$repo/.venv/bin/python" - <<'PY'
import sys, yaml
sys.path[:0] = ["tests"]
from memwarden_testing.loop import alert_rule
print(yaml.safe_dump({"groups": [{"name": "memwarden-e2e", "rules": [alert_rule()]}]}))
PY
)"
"$repo/.venv/bin/python" - "$here/monitoring.yaml" "$token" "$rules" "$work/evidence-ca.crt" \
    > "$work/monitoring.yaml" <<'PY'
import sys
text, token, rules = open(sys.argv[1]).read(), sys.argv[2], sys.argv[3]
rules = rules.replace("\n", "\n    ")
ca = open(sys.argv[4]).read().strip().replace("\n", "\n    ")
url = "https://memwarden.memwarden-system.svc:8443/alertmanager/v4"
text = text.replace("RULES", rules).replace("RECEIVER_TOKEN", token).replace("RECEIVER_CA", ca)
print(text.replace("RECEIVER_URL", url))
PY
"$kubectl" apply -f "$work/monitoring.yaml"
"$kubectl" -n memwarden-e2e-monitoring rollout status deploy/prometheus deploy/alertmanager --timeout=3m

echo "==> port-forwards for the test runner"
"$kubectl" -n memwarden-e2e-monitoring port-forward svc/prometheus 19090:9090 >/dev/null &
"$kubectl" -n memwarden-system port-forward svc/memwarden 18443:8443 >/dev/null &
sleep 3

echo "==> scenarios"
cd "$repo"
MEMWARDEN_E2E_TARGET=kind \
MEMWARDEN_E2E_PROMETHEUS_URL=http://127.0.0.1:19090 \
MEMWARDEN_E2E_EVIDENCE_URL=https://127.0.0.1:18443/evidence \
MEMWARDEN_E2E_EVIDENCE_CA="$work/evidence-ca.crt" \
MEMWARDEN_E2E_LEAKY_IMAGE="${images[leaky]}" \
MEMWARDEN_E2E_KIND_CLUSTER="$cluster" \
    .venv/bin/python -m pytest tests/e2e -m "e2e or kind" -p no:cacheprovider -v
