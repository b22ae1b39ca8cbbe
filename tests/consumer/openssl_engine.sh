#!/usr/bin/env bash
# OpenSSL 3 through the libp11 engine (Debian libengine-pkcs11-openssl): pkeyutl signatures
# with pkcs11: URIs, and a self-signed certificate made by `openssl req -x509` with the key in
# the vault. Everything is verified by plain OpenSSL against the exported public keys.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool
make_deployment
engine_conf

head -c 1000 /dev/urandom >"$WORK/data.bin"
openssl dgst -sha256 -binary "$WORK/data.bin" >"$WORK/data.sha256"

step "key pairs made with pkcs11-tool"
p11_user --keypairgen --key-type rsa:2048 --label eng-rsa --id 01
p11_user --keypairgen --key-type EC:prime256v1 --label eng-ec --id 02
export_pubkey eng-rsa "$WORK/rsa.pem"
export_pubkey eng-ec "$WORK/ec.pem"

rsa_uri='pkcs11:token=payments;object=eng-rsa;type=private'
ec_uri='pkcs11:token=payments;object=eng-ec;type=private'

step "openssl pkeyutl -sign with the RSA key (PKCS#1 v1.5, SHA-256)"
ossl_engine pkeyutl -engine pkcs11 -keyform engine -sign -inkey "$rsa_uri" \
  -pkeyopt digest:sha256 -in "$WORK/data.sha256" -out "$WORK/rsa.sig"
run openssl pkeyutl -verify -pubin -inkey "$WORK/rsa.pem" -pkeyopt digest:sha256 \
  -in "$WORK/data.sha256" -sigfile "$WORK/rsa.sig"
run openssl dgst -sha256 -verify "$WORK/rsa.pem" -signature "$WORK/rsa.sig" "$WORK/data.bin"

step "openssl pkeyutl -sign with the EC key (ECDSA)"
ossl_engine pkeyutl -engine pkcs11 -keyform engine -sign -inkey "$ec_uri" \
  -in "$WORK/data.sha256" -out "$WORK/ec.sig"
run openssl pkeyutl -verify -pubin -inkey "$WORK/ec.pem" -in "$WORK/data.sha256" -sigfile "$WORK/ec.sig"

step "openssl dgst -sha256 -sign through the engine"
ossl_engine dgst -engine pkcs11 -keyform engine -sha256 -sign "$rsa_uri" -out "$WORK/dgst.sig" "$WORK/data.bin"
run openssl dgst -sha256 -verify "$WORK/rsa.pem" -signature "$WORK/dgst.sig" "$WORK/data.bin"

step "the PIN given in the URI (pin-value) instead of the engine config"
grep -v '^PIN = ' "$ENGINE_CONF" >"$WORK/engine-nopin.cnf"
ENGINE_CONF="$WORK/engine-nopin.cnf" ossl_engine pkeyutl -engine pkcs11 -keyform engine -sign \
  -inkey "$rsa_uri?pin-value=$PIN" -pkeyopt digest:sha256 -in "$WORK/data.sha256" -out "$WORK/rsa-uri.sig"
run openssl pkeyutl -verify -pubin -inkey "$WORK/rsa.pem" -pkeyopt digest:sha256 \
  -in "$WORK/data.sha256" -sigfile "$WORK/rsa-uri.sig"

step "openssl req -new -x509 with the RSA key in the vault"
ossl_engine req -new -x509 -engine pkcs11 -keyform engine -key "$rsa_uri" -sha256 -days 30 \
  -subj "/CN=vaultp11 consumer test RSA" -out "$WORK/rsa-cert.pem"
run openssl x509 -in "$WORK/rsa-cert.pem" -noout -subject -issuer -dates
run openssl verify -CAfile "$WORK/rsa-cert.pem" "$WORK/rsa-cert.pem"
run openssl x509 -in "$WORK/rsa-cert.pem" -noout -pubkey -out "$WORK/rsa-cert-pub.pem"
cmp "$WORK/rsa-cert-pub.pem" "$WORK/rsa.pem" || fail "the certificate's key is not the vault's RSA key"

step "openssl req -new -x509 with the EC key in the vault"
ossl_engine req -new -x509 -engine pkcs11 -keyform engine -key "$ec_uri" -sha256 -days 30 \
  -subj "/CN=vaultp11 consumer test EC" -out "$WORK/ec-cert.pem"
run openssl verify -CAfile "$WORK/ec-cert.pem" "$WORK/ec-cert.pem"
run openssl x509 -in "$WORK/ec-cert.pem" -noout -pubkey -out "$WORK/ec-cert-pub.pem"
cmp "$WORK/ec-cert-pub.pem" "$WORK/ec.pem" || fail "the certificate's key is not the vault's EC key"

pass
