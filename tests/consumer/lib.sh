# shellcheck shell=bash
# Shared helpers for the consumer tests: each test script sources this file, calls
# make_deployment and then drives real PKCS#11 consumers (pkcs11-tool, OpenSSL through the
# libp11 engine, a small C++ client) against libvaultp11.so.
#
# Environment (set by tests/consumer/meson.build):
#   VAULTP11_MODULE  path of libvaultp11.so
#   VAULTP11_CLI     path of the vaultp11 admin CLI
#   FIND_LATER       path of the find_later helper (two-process test only)
# Optional:
#   KEEP_WORK=1      keep the temporary deployment for inspection
#   VAULTP11_DEBUG   module log level (defaults to 1 here so a failure's log shows the cause)
#
# Exit codes: 0 pass, 1 fail, 77 skip (a needed program is not installed).

set -euo pipefail

: "${VAULTP11_MODULE:?VAULTP11_MODULE must name libvaultp11.so}"
: "${VAULTP11_CLI:?VAULTP11_CLI must name the vaultp11 CLI}"
export VAULTP11_DEBUG="${VAULTP11_DEBUG:-1}"

TEST_NAME=$(basename "${BASH_SOURCE[1]:-$0}" .sh)
PIN=""
SECRET=""
MASKED=()  # further credentials a test makes: never shown either
BG_PIDS=()

skip() {
  echo "SKIP ($TEST_NAME): $*"
  exit 77
}

fail() {
  echo "FAIL ($TEST_NAME): $*" >&2
  exit 1
}

step() { echo "--- $*"; }

# need PROG...: skip the test when a program it drives is not installed.
need() {
  local p
  for p in "$@"; do
    command -v "$p" >/dev/null 2>&1 || skip "$p is not installed"
  done
}

[[ -f $VAULTP11_MODULE ]] || fail "module $VAULTP11_MODULE does not exist"
[[ -x $VAULTP11_CLI ]] || fail "CLI $VAULTP11_CLI does not exist"
need openssl

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vaultp11-$TEST_NAME.XXXXXX")
chmod 700 "$WORK"

cleanup() {
  local rc=$? pid
  for pid in "${BG_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n ${KEEP_WORK:-} ]]; then
    echo "deployment kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT

# The command line as printed: the secret is never shown.
show_cmd() {
  local a m shown=()
  for a in "$@"; do
    [[ -n $SECRET ]] && a=${a//"$SECRET"/***}
    for m in "${MASKED[@]}"; do [[ -n $m ]] && a=${a//"$m"/***}; done
    [[ $a =~ ^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$ ]] && a='<jwt>'  # a credential too
    # Quote what a shell would split or expand, so the line can be pasted.
    if [[ $a =~ ^[A-Za-z0-9_./:=,+@%*-]+$ ]]; then shown+=("$a"); else shown+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "\$ ${shown[*]}" >&2
}

# run CMD...: prints the command (to stderr, so $(run ...) captures only the output) and runs
# it; a failure ends the test with the command and its exit code.
run() {
  show_cmd "$@"
  local rc=0
  "$@" || rc=$?
  ((rc == 0)) || fail "exit code $rc from: $1 ${*:2:3}..."
}

# run_fails CMD...: the command must fail.
run_fails() {
  show_cmd "$@"
  if "$@"; then fail "expected a failure from: $1 ${*:2:3}..."; fi
  return 0
}

p11() { run pkcs11-tool --module "$VAULTP11_MODULE" "$@"; }
p11_user() { p11 --login --pin "$PIN" "$@"; }

# start_find_later: starts find_later (a long-running client logged in as app) in the
# background with its requests on fd 3 and answers on fd 4; waits until it is ready.
# ask REQUEST prints its answer (a label: how many objects; "version LABEL": the version).
start_find_later() {
  : "${FIND_LATER:?FIND_LATER must name the find_later helper}"
  mkfifo "$WORK/requests" "$WORK/answers"
  VAULTP11_PIN="$PIN" "$FIND_LATER" "$VAULTP11_MODULE" <"$WORK/requests" >"$WORK/answers" &
  BG_PIDS+=($!)
  exec 3>"$WORK/requests" 4<"$WORK/answers"
  local ready
  read -r -t 120 ready <&4 || fail "find_later did not start"
  [[ $ready == ready ]] || fail "find_later said '$ready' instead of ready"
}
ask() {
  local answer
  echo "$1" >&3
  read -r -t 120 answer <&4 || fail "find_later gave no answer for $1"
  echo "$answer"
}

# id_of TYPE LABEL: the CKA_ID (hex) pkcs11-tool lists for the TYPE object labelled LABEL (the
# current version; pkcs11-tool selects signing keys by --id only).
id_of() {
  p11_user -O --type "$1" | awk -v want="$2" '/^ *label:/{l=$2} /^ *ID:/{if (l == want) print $2}'
}

# keytool_pkcs11 ARGS...: keytool on the module's first slot through SunPKCS11, logged in as app.
keytool_pkcs11() {
  printf 'name = vaultp11\nlibrary = %s\nslotListIndex = 0\n' "$VAULTP11_MODULE" >"$WORK/sunpkcs11.cfg"
  run keytool -keystore NONE -storetype PKCS11 -providerClass sun.security.pkcs11.SunPKCS11 \
    -providerArg "$WORK/sunpkcs11.cfg" -storepass "$PIN" "$@"
}

# make_deployment: config with one vault "payments" and one principal "app" (Key Vault
# Administrator on it) whose client secret is random; store created by `vaultp11 init`.
# EXTRA_VAULTS_YAML, EXTRA_PRINCIPALS_YAML and EXTRA_ROLES_YAML add list items (lines of
# "  - {...}") to vaults, principals and role_assignments.
# Sets CONF, SECRET, PIN and exports VAULTP11_CONF.
make_deployment() {
  # 96 random bits; the PIN "app:<24 hex>" stays within the 32 characters that libp11's
  # engine accepts in a URI's pin-value.
  SECRET=$(openssl rand -hex 12)
  PIN="app:$SECRET"
  CONF="$WORK/vaultp11.yaml"
  local hash
  hash=$(printf '%s' "$SECRET" | "$VAULTP11_CLI" hash-secret --cost-log2n 10) ||
    fail "vaultp11 hash-secret failed"
  # shellcheck disable=SC2016  # a literal '$scrypt$'
  [[ $hash == '$scrypt$'* ]] || fail "vaultp11 hash-secret printed an unexpected hash: $hash"
  cat >"$CONF" <<EOF
${HSMS_YAML:-}
store: { path: $WORK/store.db }
vaults:
  - ${VAULT_YAML:-"{ name: payments, sku: standard }"}
${EXTRA_VAULTS_YAML:-}
${POOLS_YAML:-}
principals:
  - name: app
    auth: client_secret
    secrets: [ { hash: "$hash", expires: 2099-12-31 } ]
${EXTRA_PRINCIPALS_YAML:-}
role_assignments:
  - { principal: app, role: Key Vault Administrator, scope: /vaults/payments }
${EXTRA_ROLES_YAML:-}
EOF
  run "$VAULTP11_CLI" --config "$CONF" init
  export VAULTP11_CONF="$CONF"
  step "deployment in $WORK (config $CONF)"
}

# softhsm_env: a private SoftHSMv2 config and token directory in $WORK (exports SOFTHSM2_CONF);
# skips the test when SoftHSMv2 is not installed.
SOFTHSM_MODULE=${VAULTP11_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
softhsm_env() {
  need softhsm2-util
  [[ -f $SOFTHSM_MODULE ]] || skip "SoftHSMv2 module $SOFTHSM_MODULE not found"
  mkdir -p "$WORK/tokens"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/tokens" >"$WORK/softhsm2.conf"
  export SOFTHSM2_CONF="$WORK/softhsm2.conf"
}

# make_hsm_deployment [PROTECTION]: like make_deployment, but "payments" is a premium vault on
# a real SoftHSMv2 token made in $WORK (label vault-hsm, user PIN in $HSM_PIN) whose key pairs
# default to PROTECTION (hsm unless given: software).
make_hsm_deployment() {
  softhsm_env
  HSM_PIN=$(openssl rand -hex 8)
  run softhsm2-util --init-token --free --label vault-hsm --pin "$HSM_PIN" --so-pin "$(openssl rand -hex 8)" >/dev/null
  (umask 077 && printf '%s\n' "$HSM_PIN" >"$WORK/hsm.pin")
  HSMS_YAML="hsms: [ { name: hsm-a, module: $SOFTHSM_MODULE, token: vault-hsm, pin_file: $WORK/hsm.pin, quirks: [no-deinit] } ]"
  VAULT_YAML="{ name: payments, sku: premium, hsms: [hsm-a], default_protection: ${1:-hsm}${VAULT_EXTRA_YAML:-} }"
  make_deployment
}

# make_pool_deployment POOL [N]: like make_deployment plus a managed HSM pool POOL over N
# (default 3) SoftHSMv2 tokens made in $WORK (labels POOL-1..POOL-N, hsms of the same names,
# user PIN $HSM_PIN and SO PIN $HSM_SO_PIN, both in 0600 files given as pin_file/so_pin_file),
# quorum N, and "app" holding Managed HSM Crypto User on /managedHsms/POOL. The security domain
# is not installed: run `vaultp11 pool init POOL`. Sets POOL_TOKENS (the member token labels).
make_pool_deployment() {
  local pool=$1 n=${2:-3} i t members=""
  softhsm_env
  HSM_PIN=$(openssl rand -hex 8)
  HSM_SO_PIN=$(openssl rand -hex 8)
  (umask 077 && printf '%s\n' "$HSM_PIN" >"$WORK/hsm.pin" && printf '%s\n' "$HSM_SO_PIN" >"$WORK/hsm.so-pin")
  POOL_TOKENS=()
  HSMS_YAML="hsms:"
  for ((i = 1; i <= n; i++)); do
    t="$pool-$i"
    run softhsm2-util --init-token --free --label "$t" --pin "$HSM_PIN" --so-pin "$HSM_SO_PIN" >/dev/null
    POOL_TOKENS+=("$t")
    members+="${members:+, }$t"
    HSMS_YAML+=$'\n'"  - { name: $t, module: $SOFTHSM_MODULE, token: $t, pin_file: $WORK/hsm.pin, so_pin_file: $WORK/hsm.so-pin, quirks: [no-deinit] }"
  done
  POOLS_YAML="managed_hsm_pools:
  - { name: $pool, hsms: [$members], quorum: $n }"
  EXTRA_ROLES_YAML="  - { principal: app, role: Managed HSM Crypto User, scope: /managedHsms/$pool }"
  make_deployment
}

# export_pubkey LABEL OUT.pem: reads the public key object through pkcs11-tool (DER
# SubjectPublicKeyInfo) and converts it to PEM with openssl.
export_pubkey() {
  local label=$1 out=$2
  p11 --read-object --type pubkey --label "$label" -o "$out.der"
  run openssl pkey -pubin -inform DER -in "$out.der" -out "$out"
}

# engine_conf: writes $WORK/engine.cnf, an OpenSSL config that points the libp11 engine
# (id "pkcs11") at the module and gives it the PIN. Use it as OPENSSL_CONF for engine calls.
engine_conf() {
  local engines_dir
  engines_dir=$(openssl version -e | sed -n 's/^ENGINESDIR: "\(.*\)"$/\1/p')
  [[ -f $engines_dir/pkcs11.so ]] || skip "the libp11 engine ($engines_dir/pkcs11.so) is not installed"
  ENGINE_CONF="$WORK/engine.cnf"
  (
    umask 077
    cat >"$ENGINE_CONF" <<EOF
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
MODULE_PATH = $VAULTP11_MODULE
PIN = $PIN
init = 0
EOF
  )
}

# ossl_engine ARGS...: openssl with the engine config.
ossl_engine() { OPENSSL_CONF="$ENGINE_CONF" run openssl "$@"; }

# count_lines PATTERN FILE: number of lines matching (0 when none).
count_lines() { grep -c -- "$1" "$2" || true; }

# check_audit: the deployment's audit log (the default file sink beside the store) holds
# events, is one intact hash chain, and never shows the client secret or a JWT.
check_audit() {
  [[ -n ${CONF:-} ]] || return 0
  local log="$WORK/audit.log"
  [[ -s $log ]] || fail "no audit events in $log"
  run "$VAULTP11_CLI" --config "$CONF" audit verify "$log" >/dev/null
  if [[ -n $SECRET ]] && grep -qF -- "$SECRET" "$log"; then fail "the client secret appears in $log"; fi
  local m
  for m in "${MASKED[@]}"; do
    if [[ -n $m ]] && grep -qF -- "$m" "$log"; then fail "a credential appears in $log"; fi
  done
  if grep -qE 'eyJ[A-Za-z0-9_-]{8,}\.' "$log"; then fail "a JWT appears in $log"; fi
  step "audit log: $(wc -l <"$log") events, chain intact, no credential in it"
}

pass() {
  check_audit
  echo "PASS ($TEST_NAME)"
}
