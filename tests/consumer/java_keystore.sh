#!/usr/bin/env bash
# Java SunPKCS11 against the module: a key pair made with pkcs11-tool, its certificate (issued
# by a test CA) and the CA certificate written to the token beside it; keytool lists the key
# entry with its two-certificate chain, jarsigner signs a jar with it and the signature verifies.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool java keytool jarsigner jar
make_deployment

step "a key pair on the token, and its certificate from a test CA"
p11_user --keypairgen --key-type rsa:2048 --label jsign --id 4a01
export_pubkey jsign "$WORK/jsign.pem"
run openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/ca.key" -out "$WORK/ca.pem" -days 30 \
  -subj "/CN=vaultp11 test CA" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
run openssl req -new -key "$WORK/ca.key" -subj "/CN=jsign" -out "$WORK/dummy.csr"
run openssl x509 -req -in "$WORK/dummy.csr" -force_pubkey "$WORK/jsign.pem" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 30 -extfile <(printf 'keyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n') \
  -out "$WORK/jsign-cert.pem"
run openssl x509 -in "$WORK/jsign-cert.pem" -outform DER -out "$WORK/jsign-cert.der"
run openssl x509 -in "$WORK/ca.pem" -outform DER -out "$WORK/ca.der"

step "the certificates on the token: the key's joins its version (same label and CKA_ID), the CA's its own item"
p11_user --write-object "$WORK/jsign-cert.der" --type cert --label jsign --id 4a01
p11_user --write-object "$WORK/ca.der" --type cert --label test-ca --id ca01
out=$(p11_user -O --type cert)
echo "$out"
[[ $(grep -c '^Certificate Object' <<<"$out") == 2 ]] || fail "expected 2 certificates on the token"
p11 --read-object --type cert --label jsign -o "$WORK/back.der"
cmp "$WORK/jsign-cert.der" "$WORK/back.der" || fail "the certificate read back differs"
run_fails pkcs11-tool --module "$VAULTP11_MODULE" --login --pin "$PIN" --write-object "$WORK/ca.der" --type cert \
  --label jsign --id 4a01

cat >"$WORK/sunpkcs11.cfg" <<CFG
name = vaultp11
library = $VAULTP11_MODULE
slotListIndex = 0
CFG
java_ks() { run "$1" -keystore NONE -storetype PKCS11 -providerClass sun.security.pkcs11.SunPKCS11 \
  -providerArg "$WORK/sunpkcs11.cfg" -storepass "$PIN" "${@:2}"; }

step "keytool lists the key entry with its certificate chain"
out=$(java_ks keytool -list -v)
echo "$out" | grep -E 'Alias name|Entry type|Certificate chain length|Owner|Issuer'
grep -q 'Alias name: jsign' <<<"$out" || fail "keytool does not list the alias jsign"
grep -q 'Entry type: PrivateKeyEntry' <<<"$out" || fail "jsign is not a private key entry"
grep -q 'Certificate chain length: 2' <<<"$out" || fail "the chain of jsign is not key certificate + CA"

step "jarsigner signs with the key on the token; the jar verifies against the CA"
mkdir -p "$WORK/jar" && echo "hello from vaultp11" >"$WORK/jar/hello.txt"
run jar cf "$WORK/app.jar" -C "$WORK/jar" hello.txt
java_ks jarsigner -sigalg SHA256withRSA "$WORK/app.jar" jsign
run keytool -importcert -noprompt -alias test-ca -file "$WORK/ca.pem" -keystore "$WORK/trust.p12" \
  -storetype PKCS12 -storepass changeit
out=$(run jarsigner -verify -strict -verbose -certs -keystore "$WORK/trust.p12" -storetype PKCS12 \
  -storepass changeit "$WORK/app.jar")
grep -q 'jar verified' <<<"$out" || fail "jarsigner -verify failed: $out"
grep -q 'CN=jsign' <<<"$out" || fail "the jar is not signed by jsign"
grep -q 'path building failed\|invalid' <<<"$out" && fail "the chain to the test CA does not validate: $out"
pass
