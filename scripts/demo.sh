#!/usr/bin/env bash
# vaultp11 demo: a throwaway deployment driven by real PKCS#11 consumers.
#
#   scripts/demo.sh            build, deploy into a temp dir, run the demo, remove the temp dir
#   KEEP_DEMO=1 scripts/demo.sh   same, but keep the temp dir (its path is printed) to look at
#
# Steps: install missing packages; build the module and the CLI in build/; create a config with
# one vault (payments) and one principal (demo) whose client secret is random, hash it with
# `vaultp11 hash-secret`, create the store with `vaultp11 init`; then with pkcs11-tool list the
# token, generate an RSA-2048 and an EC P-256 key pair, sign with each and verify the signatures
# with openssl against the exported public keys; and sign through OpenSSL's libp11 engine
# (pkcs11: URI) and verify that too. The secret is never printed (shown as ***).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh

ensure_packages "${VAULTP11_BUILD_PACKAGES[@]}" opensc libengine-pkcs11-openssl openssl

MODULE=build/src/abi/libvaultp11.so
CLI=build/src/cli/vaultp11
SECRET=""

say() { printf '\n== %s\n' "$*"; }
show() {
  local a shown=()
  for a in "$@"; do
    [[ -n $SECRET ]] && a=${a//"$SECRET"/***}
    # Quote what a shell would split or expand, so the line can be pasted.
    if [[ $a =~ ^[A-Za-z0-9_./:=,+@%*-]+$ ]]; then shown+=("$a"); else shown+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "\$ ${shown[*]}"
}
# run CMD...: prints the command (secret masked) and runs it.
run() {
  show "$@"
  "$@"
}

say "build the module and the CLI (build/)"
if [[ ! -f build/meson-private/coredata.dat ]]; then
  rm -rf build
  run meson setup build -Dbuildtype=debugoptimized
fi
run ninja -C build -j "${JOBS:-2}" src/abi/libvaultp11.so src/cli/vaultp11

DEMO=$(mktemp -d "${TMPDIR:-/tmp}/vaultp11-demo.XXXXXX")
chmod 700 "$DEMO"
finish() {
  local rc=$?
  if [[ -n ${KEEP_DEMO:-} ]]; then
    echo "demo deployment kept in $DEMO"
  else
    rm -rf "$DEMO"
    echo "demo deployment $DEMO removed"
  fi
  if ((rc == 0)); then echo "demo: OK"; else echo "demo: FAILED (exit $rc)" >&2; fi
  exit "$rc"
}
trap finish EXIT

say "deployment in $DEMO"
export VAULTP11_CONF="$DEMO/vaultp11.yaml"
# 96 random bits: "demo:<24 hex>" stays within the 32-character PIN that libp11's engine takes.
SECRET=$(openssl rand -hex 12)
PIN="demo:$SECRET"
show "printf '%s' '***' | $CLI hash-secret"
HASH=$(printf '%s' "$SECRET" | "$CLI" hash-secret)
cat >"$VAULTP11_CONF" <<EOF
store: { path: $DEMO/store.db }
vaults:
  - { name: payments, sku: standard }
principals:
  - name: demo
    auth: client_secret
    secrets: [ { hash: "$HASH", expires: $(date -u -d '+30 days' +%Y-%m-%d) } ]
role_assignments:
  - { principal: demo, role: Key Vault Administrator, scope: /vaults/payments }
EOF
echo "config $VAULTP11_CONF:"
sed 's/^/    /' "$VAULTP11_CONF"
run "$CLI" --config "$VAULTP11_CONF" init

p11() { run pkcs11-tool --module "$MODULE" "$@"; }

say "the vault's token"
p11 -L

say "generate an RSA-2048 key pair (demo-rsa) and an EC P-256 key pair (demo-ec)"
p11 --keypairgen --key-type rsa:2048 --label demo-rsa --id 01 --login --pin "$PIN"
p11 --keypairgen --key-type EC:prime256v1 --label demo-ec --id 02 --login --pin "$PIN"

say "export the public keys"
p11 --read-object --type pubkey --label demo-rsa -o "$DEMO/demo-rsa.der"
p11 --read-object --type pubkey --label demo-ec -o "$DEMO/demo-ec.der"
run openssl pkey -pubin -inform DER -in "$DEMO/demo-rsa.der" -out "$DEMO/demo-rsa.pem"
run openssl pkey -pubin -inform DER -in "$DEMO/demo-ec.der" -out "$DEMO/demo-ec.pem"

echo "vaultp11 demo message, $(date -u)" >"$DEMO/message.txt"

say "sign with pkcs11-tool (SHA256-RSA-PKCS), verify with openssl"
p11 --sign -m SHA256-RSA-PKCS --id 01 --login --pin "$PIN" -i "$DEMO/message.txt" -o "$DEMO/message.rsa.sig"
run openssl dgst -sha256 -verify "$DEMO/demo-rsa.pem" -signature "$DEMO/message.rsa.sig" "$DEMO/message.txt"

say "sign with pkcs11-tool (ECDSA-SHA256), verify with openssl"
p11 --sign -m ECDSA-SHA256 --signature-format openssl --id 02 --login --pin "$PIN" \
  -i "$DEMO/message.txt" -o "$DEMO/message.ec.sig"
run openssl dgst -sha256 -verify "$DEMO/demo-ec.pem" -signature "$DEMO/message.ec.sig" "$DEMO/message.txt"

say "sign with openssl through the libp11 engine (pkcs11: URI), verify with openssl"
# The engine reads the module path and the PIN from an OpenSSL config (mode 0600), so the PIN
# is not on a command line.
(
  umask 077
  cat >"$DEMO/engine.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
MODULE_PATH = $(pwd)/$MODULE
PIN = $PIN
init = 0
EOF
)
echo "OPENSSL_CONF=$DEMO/engine.cnf (engine pkcs11, MODULE_PATH $MODULE, PIN ***)"
URI='pkcs11:token=payments;object=demo-rsa;type=private'
OPENSSL_CONF="$DEMO/engine.cnf" run openssl dgst -sha256 -engine pkcs11 -keyform engine -sign "$URI" \
  -out "$DEMO/message.engine.sig" "$DEMO/message.txt"
run openssl dgst -sha256 -verify "$DEMO/demo-rsa.pem" -signature "$DEMO/message.engine.sig" "$DEMO/message.txt"
openssl dgst -sha256 -binary "$DEMO/message.txt" >"$DEMO/message.sha256"
ECURI='pkcs11:token=payments;object=demo-ec;type=private'
OPENSSL_CONF="$DEMO/engine.cnf" run openssl pkeyutl -engine pkcs11 -keyform engine -sign -inkey "$ECURI" \
  -in "$DEMO/message.sha256" -out "$DEMO/message.engine-ec.sig"
run openssl pkeyutl -verify -pubin -inkey "$DEMO/demo-ec.pem" -in "$DEMO/message.sha256" \
  -sigfile "$DEMO/message.engine-ec.sig"

say "what the vault holds now"
p11 -O --login --pin "$PIN"
