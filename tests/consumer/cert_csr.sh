#!/usr/bin/env bash
# `vaultp11 cert csr` + `cert merge` with an external CA (openssl): the request carries the
# policy's subject, SANs and usages and is signed by a key that never leaves the vault; the
# issued certificate joins the pending version (same CKA_ID), its issuer is stored beside it,
# pkcs11-tool signs with the key and openssl verifies with the certificate; a certificate for
# another key is refused; a new request for the same name is a new pending version; a pending
# request is taken back by `cert cancel`; lifecycle run only notifies for an external CA's
# certificate.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool
make_deployment
cli() { run "$VAULTP11_CLI" --config "$CONF" "$@"; }

step "an external CA (plain openssl)"
run openssl req -new -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/ca.key" \
  -out "$WORK/ca.pem" -subj "/CN=External CA/O=elsewhere" -days 365
run openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/stranger.key" \
  -out "$WORK/stranger.csr" -subj "/CN=stranger"

step "cert csr: a pending version (key pair and request); the request has the policy in it"
"$VAULTP11_CLI" --config "$CONF" cert csr payments edge --subject "CN=edge.example,O=vaultp11 tests" \
  --san DNS:edge.example --san URI:https://edge.example/ --eku serverAuth --key rsa:2048 >"$WORK/edge.csr" ||
  fail "cert csr failed"
run openssl req -in "$WORK/edge.csr" -verify -noout
text=$(run openssl req -in "$WORK/edge.csr" -noout -text)
for want in 'Subject: CN = edge.example, O = vaultp11 tests' 'DNS:edge.example, URI:https://edge.example/' \
  'TLS Web Server Authentication' 'Public-Key: (2048 bit)'; do
  grep -qF "$want" <<<"$text" || fail "the request lacks: $want"
done
[[ $(p11_user -O --type data --label edge | grep -c '^Data object') == 1 ]] || fail "no CSR data object on the token"
[[ $(p11 -O --type cert --label edge | grep -c '^Certificate Object') == 0 ]] || fail "a certificate before the merge"
run_fails "$VAULTP11_CLI" --config "$CONF" cert renew payments edge

step "the CA signs; a certificate for another key is refused, nothing changes"
run openssl x509 -req -in "$WORK/edge.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -copy_extensions copy \
  -days 90 -out "$WORK/edge.pem"
run openssl x509 -req -in "$WORK/stranger.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -days 90 -out "$WORK/stranger.pem"
out=$("$VAULTP11_CLI" --config "$CONF" cert merge payments edge --file "$WORK/stranger.pem" 2>&1) &&
  fail "a certificate for another key was merged"
grep -q "no certificate in it is for the key of \"edge\"'s pending request" <<<"$out" || fail "merge said: $out"
[[ $(p11 -O --type cert --label edge | grep -c '^Certificate Object') == 0 ]] || fail "a refused merge stored a certificate"

step "cert merge: the certificate joins the pending version, its issuer beside it"
cat "$WORK/edge.pem" "$WORK/ca.pem" >"$WORK/chain.pem"
cli cert merge payments edge --file "$WORK/chain.pem"
run_fails "$VAULTP11_CLI" --config "$CONF" cert merge payments edge --file "$WORK/chain.pem"
edge_id=$(id_of privkey edge)
[[ $(id_of cert edge) == "$edge_id" ]] || fail "the certificate's CKA_ID is not its key's"
[[ $(p11_user -O --type data --label edge | grep -c '^Data object') == 0 ]] || fail "the request outlived the merge"
p11 --read-object --type cert --label edge-chain-1 -o "$WORK/issuer.der"
run openssl x509 -inform DER -in "$WORK/issuer.der" -out "$WORK/issuer.pem"
cmp -s <(openssl x509 -in "$WORK/issuer.pem" -outform DER) <(openssl x509 -in "$WORK/ca.pem" -outform DER) ||
  fail "edge-chain-1 is not the CA's certificate"

step "the vault's key signs; the CA-issued certificate verifies it"
head -c 300 /dev/urandom >"$WORK/data.bin"
p11_user --sign --id "$edge_id" -m SHA256-RSA-PKCS -i "$WORK/data.bin" -o "$WORK/edge.sig"
run openssl x509 -in "$WORK/edge.pem" -pubkey -noout -out "$WORK/edge.pub"
run openssl dgst -sha256 -verify "$WORK/edge.pub" -signature "$WORK/edge.sig" "$WORK/data.bin"
run openssl verify -CAfile "$WORK/ca.pem" "$WORK/edge.pem"

step "a new request for the same name (a new key): a new pending version; the merged one stays"
cli cert csr payments edge --subject "CN=edge.example" --san DNS:edge.example --key ec:P-256 --out "$WORK/edge2.csr"
[[ $(stat -c %a "$WORK/edge2.csr") == 600 ]] || fail "the request file is not 0600"
run openssl x509 -req -in "$WORK/edge2.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -copy_extensions copy \
  -days 90 -out "$WORK/edge2.pem"
run_fails "$VAULTP11_CLI" --config "$CONF" cert merge payments edge --file "$WORK/edge.pem"
cli cert merge payments edge --file "$WORK/edge2.pem"
p11 --read-object --type cert --id "$edge_id" -o "$WORK/old.der" || fail "the first version is not found by its CKA_ID"
[[ $(id_of cert edge) != "$edge_id" ]] || fail "the label still finds the first version"

step "lifecycle run: an external CA's certificate is not renewed, its owner is notified once"
at=$(date -u -d '+80 days' +%Y-%m-%d)
out=$(cli lifecycle run --at "$at")
grep -q '0 rotated, 0 renewed, 1 notified' <<<"$out" || fail "lifecycle run said: $out"
cli lifecycle run --at "$at" | grep -q '0 renewed, 0 notified' || fail "notified twice"

step "cert cancel: a pending request goes (its CSR object is not destroyable on its own)"
cli cert csr payments dropped --subject "CN=dropped" --out "$WORK/dropped.csr"
run_fails pkcs11-tool --module "$VAULTP11_MODULE" --login --pin "$PIN" --delete-object --type data --label dropped
cli cert cancel payments dropped
cli list | grep -q 'label "dropped"' && fail "the pending item is still there"
cli cert csr payments dropped --subject "CN=dropped" --out "$WORK/dropped2.csr"
dropped_id=$(id_of privkey dropped)
run_fails "$VAULTP11_CLI" --config "$CONF" cert csr payments dropped --subject "CN=dropped" --out "$WORK/dropped2.csr"
[[ $(id_of privkey dropped) == "$dropped_id" ]] || fail "a request whose file could not be written left a version"

step "cert cancel on a certificate made here: its issued version is current again, with its policy"
cli cert create payments rolling --subject "CN=rolling.example" --key ec:P-256
rolling_id=$(id_of privkey rolling)
cli cert csr payments rolling --subject "CN=rolling.example" --out "$WORK/rolling.csr"
[[ $(id_of privkey rolling) != "$rolling_id" ]] || fail "the request is not the current version"
run_fails "$VAULTP11_CLI" --config "$CONF" cert renew payments rolling
cli cert cancel payments rolling
[[ $(id_of privkey rolling) == "$rolling_id" ]] || fail "the issued version is not current after the cancel"
p11_user --sign --id "$rolling_id" -m ECDSA-SHA256 -i "$WORK/data.bin" -o "$WORK/rolling.sig"
cli cert renew payments rolling
run_fails "$VAULTP11_CLI" --config "$CONF" cert cancel payments rolling

step "bad input: no pending request, a non-certificate file, an invalid name"
printf 'not a certificate' >"$WORK/junk.pem"
run_fails "$VAULTP11_CLI" --config "$CONF" cert merge payments nothing --file "$WORK/edge.pem"
run_fails "$VAULTP11_CLI" --config "$CONF" cert merge payments dropped --file "$WORK/junk.pem"
run_fails "$VAULTP11_CLI" --config "$CONF" cert merge payments dropped --file "$WORK/stranger.pem"
run_fails "$VAULTP11_CLI" --config "$CONF" cert csr payments 'bad name' --subject CN=x
run_fails "$VAULTP11_CLI" --config "$CONF" cert create payments other --subject CN=x --issuer Unknown
grep -q '"operationName":"CertificatePendingMerge"' "$WORK/audit.log" || fail "no CertificatePendingMerge event"
grep -q '"operationName":"CertificatePendingDelete"' "$WORK/audit.log" || fail "no CertificatePendingDelete event"
pass
