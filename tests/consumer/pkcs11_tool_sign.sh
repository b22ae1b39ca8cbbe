#!/usr/bin/env bash
# pkcs11-tool: RSA-2048 and EC P-256 key pairs, signatures verified by OpenSSL against the
# public keys read back from the token.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool
make_deployment

head -c 1000 /dev/urandom >"$WORK/data.bin"

step "generate an RSA-2048 key pair"
p11_user --keypairgen --key-type rsa:2048 --label rsa-key --id 01
step "generate an EC P-256 key pair"
p11_user --keypairgen --key-type EC:prime256v1 --label ec-key --id 02

step "-O lists both pairs"
out=$(p11_user -O)
echo "$out"
[[ $(grep -c '^Private Key Object' <<<"$out") == 2 ]] || fail "expected 2 private keys"
[[ $(grep -c '^Public Key Object' <<<"$out") == 2 ]] || fail "expected 2 public keys"
grep -q '^Public Key Object; RSA 2048 bits' <<<"$out" || fail "RSA public key is not 2048 bits"
grep -q 'EC_PARAMS: *06082a8648ce3d030107' <<<"$out" || fail "EC key is not on prime256v1"

step "export the public keys"
export_pubkey rsa-key "$WORK/rsa.pem"
export_pubkey ec-key "$WORK/ec.pem"
out=$(run openssl pkey -pubin -in "$WORK/rsa.pem" -noout -text)
grep -q 'Public-Key: (2048 bit)' <<<"$out" || fail "exported RSA key is not 2048 bits"
out=$(run openssl pkey -pubin -in "$WORK/ec.pem" -noout -text)
grep -q 'NIST CURVE: P-256' <<<"$out" || fail "exported EC key is not P-256"

# pkcs11-tool 0.23 selects the signing key by --id (it ignores --label for --sign).
step "sign with SHA256-RSA-PKCS and verify with openssl"
p11_user --sign -m SHA256-RSA-PKCS --id 01 -i "$WORK/data.bin" -o "$WORK/rsa.sig"
[[ $(stat -c %s "$WORK/rsa.sig") == 256 ]] || fail "RSA-2048 signature is not 256 bytes"
run openssl dgst -sha256 -verify "$WORK/rsa.pem" -signature "$WORK/rsa.sig" "$WORK/data.bin"

step "sign with ECDSA-SHA256 (DER signature) and verify with openssl"
p11_user --sign -m ECDSA-SHA256 --id 02 --signature-format openssl -i "$WORK/data.bin" -o "$WORK/ec.sig"
run openssl dgst -sha256 -verify "$WORK/ec.pem" -signature "$WORK/ec.sig" "$WORK/data.bin"

step "a signature over other data does not verify"
printf 'other' >"$WORK/other.bin"
run_fails openssl dgst -sha256 -verify "$WORK/rsa.pem" -signature "$WORK/rsa.sig" "$WORK/other.bin"

step "raw ECDSA over a SHA-256 digest (r||s) verifies after conversion"
openssl dgst -sha256 -binary "$WORK/data.bin" >"$WORK/data.sha256"
p11_user --sign -m ECDSA --id 02 -i "$WORK/data.sha256" -o "$WORK/ec-raw.sig"
[[ $(stat -c %s "$WORK/ec-raw.sig") == 64 ]] || fail "raw P-256 ECDSA signature is not 64 bytes"
# r||s -> DER SEQUENCE { INTEGER r, INTEGER s } with openssl asn1parse's generator.
r=$(head -c 32 "$WORK/ec-raw.sig" | od -An -tx1 | tr -d ' \n')
s=$(tail -c 32 "$WORK/ec-raw.sig" | od -An -tx1 | tr -d ' \n')
printf 'asn1=SEQUENCE:sig\n[sig]\nr=INTEGER:0x%s\ns=INTEGER:0x%s\n' "$r" "$s" >"$WORK/sig.asn1"
run openssl asn1parse -genconf "$WORK/sig.asn1" -out "$WORK/ec-raw.der" -noout
run openssl pkeyutl -verify -pubin -inkey "$WORK/ec.pem" -in "$WORK/data.sha256" -sigfile "$WORK/ec-raw.der"

step "keys persist: a new process signs with the RSA key again"
p11_user --sign -m SHA256-RSA-PKCS --id 01 -i "$WORK/data.bin" -o "$WORK/rsa2.sig"
run openssl dgst -sha256 -verify "$WORK/rsa.pem" -signature "$WORK/rsa2.sig" "$WORK/data.bin"

pass
