#!/usr/bin/env bash
# Certificates with HSM keys in a premium vault (SoftHSMv2 behind it): a CA made with --hsm
# issues a server certificate whose key is in the HSM too, both certificates signed in the HSM
# and checked by openssl; pkcs11-tool signs with the server key; renewal makes a fresh HSM key,
# or keeps it with --reuse-key; `cert import --hsm` puts a PKCS#12 key into the HSM; `cert csr
# --hsm` makes the request in the HSM; SoftHSM's own module shows each key, and the store holds
# no secret of any of them.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool sqlite3
make_hsm_deployment
cli() { run "$VAULTP11_CLI" --config "$CONF" "$@"; }
cert_of() { p11 --read-object --type cert --id "$(id_of cert "$1")" -o "$WORK/$1.der" && run openssl x509 -inform DER -in "$WORK/$1.der" -out "$WORK/$1.pem"; }
hsm_keys() {
  run pkcs11-tool --module "$SOFTHSM_MODULE" --token-label vault-hsm --login --pin "$HSM_PIN" -O --type privkey |
    grep -c '^Private Key Object' || true
}
head -c 300 /dev/urandom >"$WORK/data.bin"

step "an HSM CA (EC P-384) issues a server certificate with an HSM RSA key"
cli cert create payments hsm-ca --subject "CN=HSM CA,O=vaultp11 tests" --ca --hsm --key ec:P-384 --validity-months 24
cli cert create payments site --subject "CN=site.example" --san DNS:site.example --eku serverAuth \
  --issuer hsm-ca --hsm --key rsa:2048 --validity-months 6
[[ $(hsm_keys) == 2 ]] || fail "expected the 2 keys in the SoftHSM token, found $(hsm_keys)"
cert_of hsm-ca
cert_of site
run openssl verify -CAfile "$WORK/hsm-ca.pem" "$WORK/site.pem"
run openssl x509 -in "$WORK/hsm-ca.pem" -noout -text | grep -q 'ecdsa-with-SHA384' || fail "the CA is not signed with SHA-384"
run openssl x509 -in "$WORK/site.pem" -noout -text | grep -q 'DNS:site.example' || fail "the SAN is missing"

step "the server's HSM key signs through the module; the certificate verifies it"
p11_user --sign --id "$(id_of privkey site)" -m SHA256-RSA-PKCS -i "$WORK/data.bin" -o "$WORK/site.sig"
run openssl x509 -in "$WORK/site.pem" -pubkey -noout -out "$WORK/site.pub"
run openssl dgst -sha256 -verify "$WORK/site.pub" -signature "$WORK/site.sig" "$WORK/data.bin"

step "renewal: a fresh HSM key; with --reuse-key, the same one (no new key in the HSM)"
cli cert renew payments site
[[ $(hsm_keys) == 3 ]] || fail "a renewal without reuse must make a new HSM key"
cert_of site && mv "$WORK/site.pem" "$WORK/site2.pem"
run openssl verify -CAfile "$WORK/hsm-ca.pem" "$WORK/site2.pem"
cli cert create payments api --subject "CN=api.example" --hsm --reuse-key
cert_of api && run openssl x509 -in "$WORK/api.pem" -pubkey -noout -out "$WORK/api1.pub"
cli cert renew payments api
cert_of api && run openssl x509 -in "$WORK/api.pem" -pubkey -noout -out "$WORK/api2.pub"
cmp "$WORK/api1.pub" "$WORK/api2.pub" || fail "--reuse-key made a new key"
[[ $(hsm_keys) == 4 ]] || fail "the reused key must not be copied in the HSM"
p11_user --sign --id "$(id_of privkey api)" -m ECDSA-SHA256 --signature-format openssl -i "$WORK/data.bin" -o "$WORK/api.sig"
run openssl dgst -sha256 -verify "$WORK/api2.pub" -signature "$WORK/api.sig" "$WORK/data.bin"

step "a request for api reusing its HSM key, cancelled: the shared key stays and signs"
cli cert csr payments api --subject "CN=api.example" --hsm --reuse-key --out "$WORK/api.csr"
cli cert cancel payments api
[[ $(hsm_keys) == 4 ]] || fail "the cancel destroyed or copied an HSM key"
p11_user --sign --id "$(id_of privkey api)" -m ECDSA-SHA256 --signature-format openssl -i "$WORK/data.bin" -o "$WORK/api3.sig"
run openssl dgst -sha256 -verify "$WORK/api2.pub" -signature "$WORK/api3.sig" "$WORK/data.bin"

step "cert import --hsm: a PKCS#12 key goes into the HSM"
run openssl req -new -x509 -newkey rsa:2048 -nodes -keyout "$WORK/imp.key" -out "$WORK/imp.pem" -subj "/CN=imported" -days 30
run openssl pkcs12 -export -inkey "$WORK/imp.key" -in "$WORK/imp.pem" -out "$WORK/imp.p12" -passout pass:s3cret
printf 's3cret\n' >"$WORK/p12.pass"
cli cert import payments imported --file "$WORK/imp.p12" --password-file "$WORK/p12.pass" --hsm |
  grep -q "(HSM key RSA)" || fail "the import did not say HSM"
[[ $(hsm_keys) == 5 ]] || fail "the imported key is not in the HSM"
p11_user --sign --id "$(id_of privkey imported)" -m SHA256-RSA-PKCS -i "$WORK/data.bin" -o "$WORK/imp.sig"
run openssl dgst -sha256 -verify <(openssl x509 -in "$WORK/imp.pem" -pubkey -noout) -signature "$WORK/imp.sig" "$WORK/data.bin"

step "cert csr --hsm: the request is signed in the HSM; the issued certificate merges"
"$VAULTP11_CLI" --config "$CONF" cert csr payments ext --subject "CN=ext.example" --san DNS:ext.example --hsm \
  --key ec:P-256 >"$WORK/ext.csr" || fail "cert csr --hsm failed"
run openssl req -in "$WORK/ext.csr" -verify -noout
run openssl x509 -req -in "$WORK/ext.csr" -CA "$WORK/imp.pem" -CAkey "$WORK/imp.key" -copy_extensions copy -days 30 \
  -out "$WORK/ext.pem"
cli cert merge payments ext --file "$WORK/ext.pem"
[[ $(hsm_keys) == 6 ]] || fail "the request's key is not in the HSM"

step "an HSM key is never exported: --exportable with --hsm is refused"
run_fails "$VAULTP11_CLI" --config "$CONF" cert create payments x --subject CN=x --hsm --exportable
run_fails "$VAULTP11_CLI" --config "$CONF" cert import payments x --file "$WORK/imp.p12" --password-file "$WORK/p12.pass" \
  --hsm --exportable
[[ $(hsm_keys) == 6 ]] || fail "a refused command left a key in the HSM"

step "the store holds no secret of any certificate key"
[[ $(sqlite3 "$WORK/store.db" "SELECT count(*) FROM objects WHERE class = 3 AND secret IS NOT NULL") == 0 ]] ||
  fail "a private key's secret is in the store"
pass
