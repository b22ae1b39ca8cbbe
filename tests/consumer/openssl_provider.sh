#!/usr/bin/env bash
# OpenSSL 3 through pkcs11-provider (issue 16 item 12) with an HSM in the config: `openssl req
# -x509` makes a self-signed certificate with a software key and with an HSM key of a premium
# vault, and exits 0. Before the fix every such run wrote its certificate and then died with
# SIGSEGV (exit 139): OpenSSL's exit-time cleanup calls C_Finalize, which closed inner sessions
# in SoftHSM after SoftHSM's own static destructors had run. Debian bookworm has pkcs11-provider
# in bookworm-backports only (scripts/deps.sh adds that suite for it): the test skips when it
# is not installed.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool
modules_dir=$(openssl version -m | sed -n 's/^MODULESDIR: "\(.*\)"$/\1/p')
PROVIDER="$modules_dir/pkcs11.so"
[[ -f $PROVIDER ]] || skip "pkcs11-provider ($PROVIDER) is not installed (Debian: pkcs11-provider from bookworm-backports)"

# A premium vault with an HSM (SoftHSMv2); new keys are software keys unless asked otherwise.
make_hsm_deployment software

(umask 077 && printf '%s' "$PIN" >"$WORK/vault.pin")
PROVIDER_CONF="$WORK/provider.cnf"
cat >"$PROVIDER_CONF" <<CNF
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
pkcs11 = pkcs11_sect
[default_sect]
activate = 1
[pkcs11_sect]
module = $PROVIDER
pkcs11-module-path = $VAULTP11_MODULE
pkcs11-module-token-pin = file:$WORK/vault.pin
activate = 1
CNF

step "a software key made with pkcs11-tool, an HSM key with its certificate made by the CLI"
p11_user --keypairgen --key-type EC:prime256v1 --label soft-ec --id 01
run "$VAULTP11_CLI" --config "$CONF" cert create payments hsm-ec --subject "CN=hsm" --hsm --key ec:P-256 --validity-months 1
export_pubkey soft-ec "$WORK/soft.pem"
export_pubkey hsm-ec "$WORK/hsm.pem"

# req_x509 NAME LABEL: openssl req -x509 with the vault key LABEL through the provider; it must
# exit 0 (a crash at exit is 139) and its certificate must carry that key and verify.
req_x509() {
  local name=$1 label=$2 rc=0
  show_cmd openssl req -x509 -key "pkcs11:token=payments;object=$label;type=private" -subj "/CN=$name" -out "$WORK/$name.crt"
  OPENSSL_CONF="$PROVIDER_CONF" openssl req -x509 -key "pkcs11:token=payments;object=$label;type=private" \
    -subj "/CN=$name" -days 1 -out "$WORK/$name.crt" || rc=$?
  ((rc == 0)) || fail "openssl req -x509 with $label exited $rc (139: SIGSEGV at exit)"
  [[ -s $WORK/$name.crt ]] || fail "no certificate written for $label"
  run openssl x509 -in "$WORK/$name.crt" -noout -pubkey -out "$WORK/$name.crt.pub"
  cmp -s <(openssl pkey -pubin -in "$WORK/$name.crt.pub") <(openssl pkey -pubin -in "$WORK/$3") ||
    fail "the certificate for $label does not carry the vault key"
  run openssl verify -CAfile "$WORK/$name.crt" "$WORK/$name.crt"
}

step "openssl req -x509 with the software key exits 0"
req_x509 soft soft-ec soft.pem
step "openssl req -x509 with the HSM key exits 0"
req_x509 hsm hsm-ec hsm.pem
check_audit
