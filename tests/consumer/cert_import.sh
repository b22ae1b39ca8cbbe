#!/usr/bin/env bash
# `vaultp11 cert import`: a PKCS#12 file (EC key, its certificate and the issuing CA) becomes a
# certificate item (key pair + certificate, one version, one CKA_ID) and a CA item; pkcs11-tool
# signs with the key and openssl verifies with the certificate; Java sees the chain; a second
# import is a new version; bad files are refused with nothing stored.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool keytool
make_deployment
cli() { run "$VAULTP11_CLI" --config "$CONF" "$@"; }

step "a CA, a web server key and its certificate, in a PKCS#12 file with the chain"
run openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/ca.key" -out "$WORK/ca.pem" -days 30 \
  -subj "/CN=import test CA" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/web.key"
run openssl req -new -key "$WORK/web.key" -subj "/CN=web.example" -out "$WORK/web.csr"
run openssl x509 -req -in "$WORK/web.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial -days 30 \
  -extfile <(printf 'subjectAltName=DNS:web.example\nextendedKeyUsage=serverAuth\n') -out "$WORK/web.pem"
printf 'p12-%s\n' "$(openssl rand -hex 6)" >"$WORK/p12.pw"
run openssl pkcs12 -export -inkey "$WORK/web.key" -in "$WORK/web.pem" -certfile "$WORK/ca.pem" \
  -passout "file:$WORK/p12.pw" -out "$WORK/web.p12"

step "cert import: key pair and certificate as one version, the CA beside it"
out=$(cli cert import payments web --file "$WORK/web.p12" --password-file "$WORK/p12.pw")
echo "$out"
grep -q '1 issuer certificate added' <<<"$out" || fail "the CA certificate was not added"
# (pkcs11-tool -O --label lists every certificate: pick the objects labelled web by hand)
ids=$(p11_user -O | awk '/^ *label:/{l=$2} /^ *ID:/{if (l == "web") print $2}' | sort -u)
[[ $(wc -l <<<"$ids") == 1 && ${#ids} == 32 ]] || fail "key and certificate of web do not share one CKA_ID: $(printf "%q" "$ids")"
for t in privkey:Private pubkey:Public cert:Certificate; do
  [[ $(p11_user -O --type "${t%%:*}" | awk -v k="${t##*:}" '$1 == k {o=1} /^ *label:/{if (o && $2 == "web") n++; o=0} END {print n+0}') == 1 ]] ||
    fail "not one ${t%%:*} labelled web"
done
p11_user -O --type cert --label web-chain-1 | grep -q '^Certificate Object' || fail "no CA certificate web-chain-1"

step "the imported key signs; openssl verifies with the certificate"
head -c 300 /dev/urandom >"$WORK/data.bin"
p11_user --sign --id "$ids" -m ECDSA-SHA256 --signature-format openssl -i "$WORK/data.bin" -o "$WORK/web.sig"
run openssl x509 -in "$WORK/web.pem" -pubkey -noout -out "$WORK/web.pub"
run openssl dgst -sha256 -verify "$WORK/web.pub" -signature "$WORK/web.sig" "$WORK/data.bin"

step "Java sees the key with its chain"
out=$(keytool_pkcs11 -list -v -alias web)
grep -q 'Certificate chain length: 2' <<<"$out" || fail "keytool does not show web's chain of 2"

step "a second import is a new version; the CA is not stored twice"
out=$(cli cert import payments web --file "$WORK/web.p12" --password-file "$WORK/p12.pw")
grep -q '0 issuer certificates added' <<<"$out" || fail "the CA was stored again: $out"
[[ $(p11_user -O --type cert | grep -c 'label: *web$') == 1 ]] || fail "the label must find one version of web"

step "PEM forms: openssl pkcs12 -nodes output (bag attributes first), and a legacy encrypted key"
run openssl pkcs12 -in "$WORK/web.p12" -passin "file:$WORK/p12.pw" -nodes -out "$WORK/bags.pem"
head -c 10 "$WORK/bags.pem" | grep -q 'Bag' || fail "expected bag attributes before the first PEM block"
cli cert import payments web-bags --file "$WORK/bags.pem" | grep -q '0 issuer certificates added' || fail "bags.pem import"
printf 'legacy-pw\n' >"$WORK/legacy.pw"
run openssl pkey -in "$WORK/web.key" -aes256 -traditional -passout "file:$WORK/legacy.pw" -out "$WORK/legacy.key"
grep -q 'DEK-Info' "$WORK/legacy.key" || fail "expected a legacy encrypted PEM key"
cat "$WORK/web.pem" "$WORK/legacy.key" >"$WORK/legacy.pem"
cli cert import payments web-legacy --file "$WORK/legacy.pem" --password-file "$WORK/legacy.pw"

step "--exportable: the import keeps a PKCS#12 bundle (empty password) with the key and the chain"
cli cert import payments web-export --file "$WORK/web.p12" --password-file "$WORK/p12.pw" --exportable --export-format pkcs12
"$VAULTP11_CLI" --config "$CONF" secret get payments web-export >"$WORK/export.p12" || fail "secret get failed"
run openssl pkcs12 -in "$WORK/export.p12" -passin pass: -nodes -out "$WORK/export.pem"
[[ $(grep -c 'BEGIN CERTIFICATE' "$WORK/export.pem") == 2 ]] || fail "the bundle lacks the chain"
cmp <(openssl pkey -in "$WORK/export.pem" -pubout) <(openssl pkey -in "$WORK/web.key" -pubout) || fail "the bundle's key differs"

step "bad files are refused, nothing stored"
run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/other.key"
cat "$WORK/web.pem" "$WORK/other.key" >"$WORK/mismatch.pem"
run_fails "$VAULTP11_CLI" --config "$CONF" cert import payments mismatch --file "$WORK/mismatch.pem"
printf 'wrong\n' >"$WORK/wrong.pw"
run_fails "$VAULTP11_CLI" --config "$CONF" cert import payments wrongpw --file "$WORK/web.p12" --password-file "$WORK/wrong.pw"
run_fails "$VAULTP11_CLI" --config "$CONF" cert import payments nokey --file "$WORK/web.pem"
p11_user --keypairgen --key-type EC:prime256v1 --label taken
run_fails "$VAULTP11_CLI" --config "$CONF" cert import payments taken --file "$WORK/web.p12" --password-file "$WORK/p12.pw"
objs=$(p11_user -O)
grep -q 'label: *\(mismatch\|wrongpw\|nokey\)$' <<<"$objs" && fail "a refused import left objects behind"
[[ $(grep -c '^Certificate Object' <<<"$objs") == 5 ]] || fail "a refused import stored a certificate"
grep -q '"operationName":"CertificateImport"' "$WORK/audit.log" || fail "no CertificateImport event"
pass
