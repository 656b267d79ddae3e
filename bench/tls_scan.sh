#!/usr/bin/env bash
# TLS under an outside scanner: sslyze (PyPI, pinned, installed into a
# cached virtualenv) scans Pier's TLS listener and the script fails on a
# regression from what it finds today:
#   - TLS 1.2 and 1.3 accepted; SSL 2.0/3.0, TLS 1.0/1.1 refused;
#   - every TLS 1.2 suite AEAD (GCM, ChaCha20-Poly1305) with forward
#     secrecy (ECDHE); TLS 1.3 suites are both by definition;
#   - no TLS compression, secure renegotiation, TLS_FALLBACK_SCSV;
#   - not vulnerable to Heartbleed, CCS injection or ROBOT.
#
#   bash bench/tls_scan.sh                  # exit 1 on a regression
#   PIER_BIN=target/release/pier-dataplane bash bench/tls_scan.sh
set -euo pipefail

cd "$(dirname "$0")/.."
SSLYZE_VERSION=6.3.1
source bench/lib/common.sh
install_missing openssl
build_pier

venv=${PIER_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pier-bench}/sslyze-$SSLYZE_VERSION
if [[ ! -x $venv/bin/sslyze ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "sslyze==$SSLYZE_VERSION"
fi

PORT=18560
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj "/CN=scan.example" -addext "subjectAltName=DNS:scan.example" \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
mkdir -p "$WORK/routes" "$WORK/docroot"
echo hello >"$WORK/docroot/index.html"
cat >"$WORK/routes/site.yaml" <<YAML
apiVersion: pier.dev/v1alpha1
kind: StaticRoute
metadata: {name: scan, namespace: default}
spec:
  root: $WORK/docroot
YAML
"$PIER_BIN" --routes "$WORK/routes" --listen 127.0.0.1:0 --listen-tls "127.0.0.1:$PORT" --admin 127.0.0.1:0 \
  --tls-default-cert "$WORK/cert.pem" --tls-default-key "$WORK/key.pem" --workers 1 --log warn &
PIDS+=("$!")
for _ in $(seq 100); do
  curl -skf -o /dev/null "https://127.0.0.1:$PORT/" && break
  sleep 0.05
done

# The scans named, without the Mozilla-profile check (which judges the
# self-signed test certificate, not the listener).
"$venv/bin/sslyze" --quiet --mozilla_config=disable --sslv2 --sslv3 --tlsv1 --tlsv1_1 --tlsv1_2 --tlsv1_3 \
  --compression --reneg --fallback --heartbleed --openssl_ccs --robot \
  --json_out "$WORK/scan.json" "127.0.0.1:$PORT" >/dev/null
mkdir -p bench/results
report=bench/results/tls-scan-$(date -u +%Y%m%dT%H%M%SZ).md
status=0
python3 - "$WORK/scan.json" "$SSLYZE_VERSION" >"$report" <<'PY' || status=$?
import json, sys

scan = json.load(open(sys.argv[1]))["server_scan_results"][0]["scan_result"]
failures = []
rows = []

def result(name):
    entry = scan.get(name) or {}
    if entry.get("status") != "COMPLETED":
        failures.append(f"{name}: scan {entry.get('status')}")
        return {}
    return entry["result"]

def suites(name):
    return [s["cipher_suite"]["name"] for s in result(name).get("accepted_cipher_suites", [])]

for version, wanted in [("ssl_2_0", False), ("ssl_3_0", False), ("tls_1_0", False),
                        ("tls_1_1", False), ("tls_1_2", True), ("tls_1_3", True)]:
    accepted = suites(f"{version}_cipher_suites")
    rows.append((version.replace("_", " ", 1).replace("_", "."), ", ".join(accepted) or "refused"))
    if bool(accepted) != wanted:
        failures.append(f"{version}: {'refused' if wanted else 'accepted'}")
for name in suites("tls_1_2_cipher_suites"):
    if "ECDHE" not in name or not ("GCM" in name or "CHACHA20" in name):
        failures.append(f"TLS 1.2 suite without AEAD and forward secrecy: {name}")

checks = [
    ("compression", not result("tls_compression").get("supports_compression", True)),
    ("secure renegotiation", result("session_renegotiation").get("supports_secure_renegotiation", False)),
    ("no client-initiated renegotiation DoS", not result("session_renegotiation").get("is_vulnerable_to_client_renegotiation_dos", True)),
    ("TLS_FALLBACK_SCSV", result("tls_fallback_scsv").get("supports_fallback_scsv", False)),
    ("Heartbleed", not result("heartbleed").get("is_vulnerable_to_heartbleed", True)),
    ("CCS injection", not result("openssl_ccs_injection").get("is_vulnerable_to_ccs_injection", True)),
    ("ROBOT", str(result("robot").get("robot_result", "")).startswith("NOT_VULNERABLE")),
]
for name, ok in checks:
    rows.append((name, "ok" if ok else "REGRESSION"))
    if not ok:
        failures.append(name)

print(f"# Pier's TLS listener under sslyze {sys.argv[2]}\n")
print("| check | finding |\n|---|---|")
for name, finding in rows:
    print(f"| {name} | {finding} |")
print()
print("verdict: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
sys.exit(1 if failures else 0)
PY
cat "$report"
echo "written to $report" >&2
exit $status
