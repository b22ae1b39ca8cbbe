#!/usr/bin/env bash
# pkcs11-tool --test: OpenSC's own self test (random, digests, signatures, verify, decrypt)
# over a vault holding RSA, EC and AES keys.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool
make_deployment

step "keys for the self test to use"
p11_user --keypairgen --key-type rsa:2048 --label rsa-key --id 01
p11_user --keypairgen --key-type EC:prime256v1 --label ec-key --id 02
p11_user --keygen --key-type AES:32 --label aes-key --id 03

step "pkcs11-tool --test --login"
out=$(p11_user --test)
echo "$out"
grep -q '^No errors' <<<"$out" || fail "pkcs11-tool --test reported errors"
grep -q 'RSA-PKCS: OK' <<<"$out" || fail "pkcs11-tool --test did not test RSA-PKCS"

# Without --allow-sw the self test skips signing with mechanisms that lack CKF_HW, which is
# every mechanism of a software vault ("Signatures: not implemented").
step "pkcs11-tool --test --login --allow-sw (signature tests too)"
out=$(p11_user --test --allow-sw)
echo "$out"
grep -q '^No errors' <<<"$out" || fail "pkcs11-tool --test --allow-sw reported errors"
sigs=$(sed -n '/^Signatures/,/^Verify/p' <<<"$out")
grep -q 'SHA256-RSA-PKCS: OK' <<<"$sigs" || fail "the self test did not sign with SHA256-RSA-PKCS"

pass
