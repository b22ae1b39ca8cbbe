#!/usr/bin/env bash
# `vaultp11 cert create` and `cert renew`: a vault CA (Self) issues a server certificate;
# openssl checks the chain, SANs, key usage, EKU and validity; pkcs11-tool reads both from the
# token and signs with the server key; Java sees the chain; a renewal is a new version with a
# fresh key (the old one stays, by its CKA_ID) or, with --reuse-key, the same key; bad input is
# refused with nothing stored.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool keytool
make_deployment
cli() { run "$VAULTP11_CLI" --config "$CONF" "$@"; }
cert_of() { p11 --read-object --type cert --label "$1" -o "$WORK/$1.der" && run openssl x509 -inform DER -in "$WORK/$1.der" -out "$WORK/$1.pem"; }

step "a CA (Self) and a server certificate it issues"
cli cert create payments vault-ca --subject "CN=Vault CA,O=vaultp11 tests" --ca --key ec:P-384 --validity-months 24
cli cert create payments site --subject "CN=site.example,O=vaultp11 tests" --san DNS:site.example \
  --san DNS:www.site.example --san email:ops@site.example --eku serverAuth --eku clientAuth \
  --key-usage digitalSignature --key-usage keyEncipherment --issuer vault-ca --key rsa:2048 --validity-months 3
cert_of vault-ca
cert_of site

step "openssl: chain, names, usages, validity"
run openssl verify -CAfile "$WORK/vault-ca.pem" "$WORK/site.pem"
text=$(run openssl x509 -in "$WORK/site.pem" -noout -text)
for want in 'DNS:site.example, DNS:www.site.example, email:ops@site.example' 'TLS Web Server Authentication, TLS Web Client Authentication' \
  'Digital Signature, Key Encipherment' 'CA:FALSE' 'Issuer: CN = Vault CA, O = vaultp11 tests' 'Subject: CN = site.example'; do
  grep -qF "$want" <<<"$text" || fail "the server certificate lacks: $want"
done
grep -qF 'CA:TRUE' <<<"$(run openssl x509 -in "$WORK/vault-ca.pem" -noout -text)" || fail "the CA certificate is not a CA"
end=$(run openssl x509 -in "$WORK/site.pem" -noout -enddate | cut -d= -f2)
days=$(( ($(date -d "$end" +%s) - $(date +%s)) / 86400 ))
((days >= 88 && days <= 93)) || fail "3 months of validity expected, got $days days"

step "the server key signs; the certificate's key verifies"
head -c 200 /dev/urandom >"$WORK/data.bin"
# (pkcs11-tool picks a signing key by --id only: the label's current version's id)
site_id=$(id_of privkey site)
p11_user --sign --id "$site_id" -m SHA256-RSA-PKCS -i "$WORK/data.bin" -o "$WORK/site.sig"
run openssl x509 -in "$WORK/site.pem" -pubkey -noout -out "$WORK/site.pub"
run openssl dgst -sha256 -verify "$WORK/site.pub" -signature "$WORK/site.sig" "$WORK/data.bin"

step "Java sees the server key with its chain"
out=$(keytool_pkcs11 -list -v -alias site)
grep -q 'Certificate chain length: 2' <<<"$out" || fail "keytool does not show site's chain of 2"

step "renewal: a new version with a fresh key; the old version stays"
old_id=$(id_of cert site)
cli cert renew payments site
cert_of site
mv "$WORK/site.pem" "$WORK/site2.pem"
run openssl x509 -in "$WORK/site2.pem" -pubkey -noout -out "$WORK/site2.pub"
cmp -s "$WORK/site.pub" "$WORK/site2.pub" && fail "the renewed certificate has the old key"
run openssl verify -CAfile "$WORK/vault-ca.pem" "$WORK/site2.pem"
p11 --read-object --type cert --id "$old_id" -o "$WORK/old.der" || fail "the old version is not found by its CKA_ID"
run openssl x509 -inform DER -in "$WORK/old.der" -pubkey -noout -out "$WORK/old.pub"
cmp "$WORK/site.pub" "$WORK/old.pub" || fail "the old version's certificate changed"

step "--reuse-key: the renewal keeps the key"
cli cert create payments api --subject "CN=api.example" --san DNS:api.example --reuse-key
cert_of api && run openssl x509 -in "$WORK/api.pem" -pubkey -noout -out "$WORK/api1.pub"
cli cert renew payments api
cert_of api && run openssl x509 -in "$WORK/api.pem" -pubkey -noout -out "$WORK/api2.pub"
cmp "$WORK/api1.pub" "$WORK/api2.pub" || fail "--reuse-key renewal changed the key"

step "the certificate manages its key: the key alone can be neither changed nor deleted; deleting the certificate deletes the item"
api_key=$(id_of privkey api)
run_fails pkcs11-tool --module "$VAULTP11_MODULE" --login --pin "$PIN" --delete-object --type privkey --id "$api_key"
run_fails pkcs11-tool --module "$VAULTP11_MODULE" --login --pin "$PIN" --set-id 0102 --type privkey --id "$api_key"
p11_user --delete-object --type cert --id "$(id_of cert api)"
[[ $(p11_user -O | grep -c 'label: *api$') == 0 ]] || fail "objects of api outlived its certificate"
run_fails pkcs11-tool --module "$VAULTP11_MODULE" --read-object --type pubkey --id "$api_key" -o "$WORK/api-gone.der"

step "lifecycle run renews a certificate at 80% of its lifetime (auto-renew, the default)"
cli cert create payments short --subject "CN=short.example" --issuer vault-ca --validity-months 1
cli lifecycle run | grep -q "0 renewed" || fail "renewed before 80% of the lifetime"
out=$(cli lifecycle run --at "$(date -u -d '+26 days' +%Y-%m-%d)")
echo "$out"
grep -q '^renewed: certificate "short"' <<<"$out" || fail "short was not renewed at 80% of its lifetime"
cert_of short
run openssl verify -CAfile "$WORK/vault-ca.pem" "$WORK/short.pem"

step "notify instead of renew: two runs at once give one notice, and no new version"
cli cert create payments watch --subject "CN=watch.example" --validity-months 2 --lifetime-action notify --days-before-expiry 20
at=$(date -u -d '+45 days' +%Y-%m-%d)
"$VAULTP11_CLI" --config "$CONF" lifecycle run --at "$at" >"$WORK/w1.out" 2>&1 &
w1=$!
"$VAULTP11_CLI" --config "$CONF" lifecycle run --at "$at" >"$WORK/w2.out" 2>&1 &
w2=$!
wait "$w1" || fail "lifecycle run failed: $(cat "$WORK/w1.out")"
wait "$w2" || fail "lifecycle run failed: $(cat "$WORK/w2.out")"
[[ $(cat "$WORK/w1.out" "$WORK/w2.out" | grep -c '^notify: certificate "watch"') == 1 ]] || fail "expected one notice for watch"
grep -q '"operationName":"CertificateNearExpiry"' "$WORK/audit.log" || fail "no CertificateNearExpiry event"
[[ $("$VAULTP11_CLI" --config "$CONF" list --json | grep -c '"label": "watch"') == 3 ]] || fail "notify made a new version"

step "exportable (PEM): the certificate's secret holds key, certificate and issuer; it goes with its certificate only"
cli cert create payments shipped --subject "CN=shipped.example" --san DNS:shipped.example --issuer vault-ca --exportable
p11_user --read-object --type data --label shipped -o "$WORK/shipped.bundle"
"$VAULTP11_CLI" --config "$CONF" secret get payments shipped >"$WORK/shipped.get" || fail "secret get of the bundle failed"
cmp "$WORK/shipped.bundle" "$WORK/shipped.get" || fail "pkcs11-tool and secret get read different bundles"
[[ $(grep -c 'BEGIN CERTIFICATE' "$WORK/shipped.bundle") == 2 ]] || fail "the bundle lacks the certificate or its issuer"
run openssl x509 -in "$WORK/shipped.bundle" -out "$WORK/shipped.pem"
run openssl verify -CAfile "$WORK/vault-ca.pem" "$WORK/shipped.pem"
cmp <(openssl pkey -in "$WORK/shipped.bundle" -pubout) <(openssl x509 -in "$WORK/shipped.pem" -pubkey -noout) ||
  fail "the bundle's key is not the certificate's"
[[ $(id_of cert shipped) == $(id_of privkey shipped) ]] || fail "the bundle's certificate is not the key's"
run_fails pkcs11-tool --module "$VAULTP11_MODULE" --read-object --type data --label shipped -o "$WORK/nologin.bundle"
run_fails pkcs11-tool --module "$VAULTP11_MODULE" --login --pin "$PIN" --delete-object --type data --label shipped
cli cert renew payments shipped
p11_user --read-object --type data --label shipped -o "$WORK/shipped2.bundle"
cmp -s <(openssl pkey -in "$WORK/shipped.bundle" -pubout) <(openssl pkey -in "$WORK/shipped2.bundle" -pubout) &&
  fail "the renewed bundle has the old key"

step "while a new request for it is pending, the certificate in service keeps giving its bundle"
cli cert csr payments shipped --subject "CN=shipped.example" --out "$WORK/shipped.csr"
"$VAULTP11_CLI" --config "$CONF" secret get payments shipped >"$WORK/shipped3.bundle" || fail "secret get failed while pending"
cmp "$WORK/shipped2.bundle" "$WORK/shipped3.bundle" || fail "the pending request changed the bundle"
cli cert cancel payments shipped

step "exportable (PKCS#12, empty password): opened by openssl"
cli cert create payments shipped-p12 --subject "CN=p12.example" --exportable --export-format pkcs12 --key rsa:2048
"$VAULTP11_CLI" --config "$CONF" secret get payments shipped-p12 >"$WORK/shipped.p12" || fail "secret get failed"
run openssl pkcs12 -in "$WORK/shipped.p12" -passin pass: -nodes -out "$WORK/p12.pem"
grep -q 'PRIVATE KEY' "$WORK/p12.pem" && grep -q 'BEGIN CERTIFICATE' "$WORK/p12.pem" || fail "the PKCS#12 bundle lacks key or certificate"

step "bad input: refused, nothing stored"
before=$(p11_user -O | grep -c 'Object')
for bad in "x1 --subject CN" "x2 --subject CN=x --san site.example" "x3 --subject CN=x --validity-months 0" \
  "x4 --subject CN=x --issuer nowhere" "x5 --subject CN=x --issuer site" "x6 --subject CN=x --hsm" \
  "x7 --subject CN=x --key rsa:1024" "site --subject CN=again" "x8 --subject CN=x --eku notAnEku" \
  "x9 --subject CN=x --lifetime-action wait" "x10 --subject CN=x --lifetime-percentage 80 --days-before-expiry 5" \
  "x11 --subject CN=x --validity-months 1 --days-before-expiry 40" "x12 --subject CN=x --exportable --export-format der"; do
  # shellcheck disable=SC2086  # the options split on purpose
  run_fails "$VAULTP11_CLI" --config "$CONF" cert create payments $bad
done
run_fails "$VAULTP11_CLI" --config "$CONF" cert renew payments nothing
[[ $(p11_user -O | grep -c 'Object') == "$before" ]] || fail "a refused command stored objects"
[[ $(grep -c '"operationName":"CertificateCreate"' "$WORK/audit.log") -ge 20 ]] || fail "CertificateCreate events missing"
grep -q '"operationName":"CertificateRenew"' "$WORK/audit.log" || fail "no CertificateRenew event"
pass
