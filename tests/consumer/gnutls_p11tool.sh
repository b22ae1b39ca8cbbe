#!/usr/bin/env bash
# GnuTLS p11tool: token listing, key pairs generated with GnuTLS's own templates (CKA_ID from
# the public key), signatures (RSA PKCS#1 v1.5, RSA-PSS, ECDSA) checked by p11tool against
# the public key, and the exported public key checked by OpenSSL.
source "$(dirname "$0")/lib.sh"
need p11tool
make_deployment
export GNUTLS_PIN="$PIN"
token='pkcs11:token=payments'
p11t() { run p11tool --provider "$VAULTP11_MODULE" "$@"; }

step "p11tool --list-tokens"
out=$(p11t --list-tokens)
echo "$out"
grep -q 'URL: pkcs11:.*token=payments' <<<"$out" || fail "p11tool does not list the token payments"
grep -q 'Flags:.*Requires login' <<<"$out" || fail "p11tool: the token does not require login"

step "generate an EC P-256 and an RSA-2048 key pair with p11tool"
p11t --login --generate-privkey=ECDSA --curve=secp256r1 --label gnutls-ec --outfile "$WORK/gnutls-ec.pub" "$token"
p11t --login --generate-privkey=RSA --bits=2048 --label gnutls-rsa --outfile "$WORK/gnutls-rsa.pub" "$token"

step "p11tool --list-privkeys"
out=$(p11t --login --list-privkeys "$token")
echo "$out"
grep -q 'Type: Private key (EC/ECDSA-SECP256R1)' <<<"$out" || fail "no EC P-256 private key listed"
grep -q 'Type: Private key (RSA-2048)' <<<"$out" || fail "no RSA-2048 private key listed"

step "p11tool --test-sign with each key"
p11t --login --test-sign "$token;object=gnutls-ec;type=private"
p11t --login --test-sign "$token;object=gnutls-rsa;type=private"
p11t --login --test-sign --sign-params RSA-PSS "$token;object=gnutls-rsa;type=private"

step "the public key exported by p11tool is the one generated, and OpenSSL reads it"
p11t --login --export-pubkey "$token;object=gnutls-rsa;type=public" --outfile "$WORK/exported-rsa.pub"
run openssl pkey -pubin -in "$WORK/exported-rsa.pub" -noout
cmp <(openssl pkey -pubin -in "$WORK/gnutls-rsa.pub" -outform DER) \
  <(openssl pkey -pubin -in "$WORK/exported-rsa.pub" -outform DER) ||
  fail "exported RSA public key differs from the generated one"

step "pkcs11-tool signs with the key p11tool made; OpenSSL verifies"
if command -v pkcs11-tool >/dev/null 2>&1; then
  id=$(p11t --login --list-privkeys "$token;object=gnutls-ec" | sed -n 's/^\tID: //p' | tr -d ':')
  [[ -n $id ]] || fail "no CKA_ID on the key p11tool generated"
  printf 'gnutls' >"$WORK/data.bin"
  p11_user --sign -m ECDSA-SHA256 --signature-format openssl --id "$id" -i "$WORK/data.bin" -o "$WORK/ec.sig"
  run openssl dgst -sha256 -verify "$WORK/gnutls-ec.pub" -signature "$WORK/ec.sig" "$WORK/data.bin"
fi

pass
