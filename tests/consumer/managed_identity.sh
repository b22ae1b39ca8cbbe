#!/usr/bin/env bash
# A managed identity: the principal is bound to this process's uid, so nothing in the
# application holds a secret. pkcs11-tool sees the token's protected authentication path and
# logs in without a PIN; OpenSSL 3 with the libp11 engine signs with no PIN anywhere (neither
# in its config nor in the URI). Signatures are verified by plain OpenSSL.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool
EXTRA_PRINCIPALS_YAML="  - { name: me, auth: managed_identity, uid: $(id -u) }"
EXTRA_ROLES_YAML="  - { principal: me, role: Key Vault Administrator, scope: /vaults/payments }"
make_deployment
engine_conf
grep -v '^PIN = ' "$ENGINE_CONF" >"$WORK/engine-nopin.cnf"
ENGINE_CONF="$WORK/engine-nopin.cnf"

step "the token reports a protected authentication path to this process"
p11 -L >"$WORK/slots.txt"
grep -qi "PIN pad\|protected" "$WORK/slots.txt" || fail "no protected authentication path in: $(cat "$WORK/slots.txt")"

step "pkcs11-tool logs in without a PIN and makes keys"
p11 --login --keypairgen --key-type EC:prime256v1 --label mi-ec --id 01
p11 --login --keypairgen --key-type rsa:2048 --label mi-rsa --id 02
p11 --login -O >"$WORK/objects.txt"
[[ $(count_lines "Private Key Object" "$WORK/objects.txt") == 2 ]] || fail "expected 2 private keys: $(cat "$WORK/objects.txt")"
export_pubkey mi-ec "$WORK/ec.pem"
export_pubkey mi-rsa "$WORK/rsa.pem"

head -c 1000 /dev/urandom >"$WORK/data.bin"
openssl dgst -sha256 -binary "$WORK/data.bin" >"$WORK/data.sha256"

step "pkcs11-tool signs without a PIN"
p11 --login --sign --mechanism ECDSA-SHA256 --signature-format openssl --label mi-ec \
  -i "$WORK/data.bin" -o "$WORK/tool-ec.sig"
run openssl dgst -sha256 -verify "$WORK/ec.pem" -signature "$WORK/tool-ec.sig" "$WORK/data.bin"

step "the OpenSSL engine signs with no PIN in its config or the URI"
grep -q '^PIN' "$ENGINE_CONF" && fail "the engine config still has a PIN"
ossl_engine pkeyutl -engine pkcs11 -keyform engine -sign -inkey 'pkcs11:token=payments;object=mi-ec;type=private' \
  -in "$WORK/data.sha256" -out "$WORK/eng-ec.sig"
run openssl pkeyutl -verify -pubin -inkey "$WORK/ec.pem" -in "$WORK/data.sha256" -sigfile "$WORK/eng-ec.sig"
ossl_engine dgst -engine pkcs11 -keyform engine -sha256 -sign 'pkcs11:token=payments;object=mi-rsa;type=private' \
  -out "$WORK/eng-rsa.sig" "$WORK/data.bin"
run openssl dgst -sha256 -verify "$WORK/rsa.pem" -signature "$WORK/eng-rsa.sig" "$WORK/data.bin"

step "the client-secret principal still logs in with its PIN"
p11_user -O >/dev/null

pass
