#!/usr/bin/env bash
# pkcs11-tool -L / -I / -M / -O: slot, module, mechanism and object listings; login checks.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool
make_deployment

step "pkcs11-tool -L lists the vault's token"
out=$(p11 -L)
echo "$out"
grep -q 'token label *: payments$' <<<"$out" || fail "-L does not show the token 'payments'"
grep -q 'token manufacturer *: vaultp11' <<<"$out" || fail "-L does not show manufacturer vaultp11"
grep -q 'token flags *:.*login required' <<<"$out" || fail "-L: token does not require login"
serial=$(sed -n 's/^ *serial num *: *//p' <<<"$out")
[[ -n $serial ]] || fail "-L shows no serial number"
step "the serial number is stable across processes"
[[ $(p11 -L | sed -n 's/^ *serial num *: *//p') == "$serial" ]] || fail "serial number changed between runs"

step "pkcs11-tool -I shows the module info"
out=$(p11 -I)
echo "$out"
grep -q '^Cryptoki version 2\.40' <<<"$out" || fail "-I: Cryptoki version is not 2.40"
grep -q '^Manufacturer *vaultp11' <<<"$out" || fail "-I: manufacturer is not vaultp11"

step "pkcs11-tool -M lists the mechanisms"
out=$(p11 -M)
echo "$out"
for m in RSA-PKCS-KEY-PAIR-GEN ECDSA-KEY-PAIR-GEN AES-KEY-GEN SHA256-RSA-PKCS ECDSA-SHA256 AES-CBC-PAD RSA-PKCS-OAEP; do
  grep -q "^  $m," <<<"$out" || fail "-M does not list $m"
done

step "pkcs11-tool -O after login on an empty vault"
out=$(p11_user -O)
echo "$out"
[[ -z $(grep -E '^(Private|Public|Secret) Key Object|^Data object|^Certificate Object' <<<"$out" || true) ]] ||
  fail "a fresh vault lists objects"

step "a data object created after login is listed by -O"
printf 'hello' >"$WORK/hello.txt"
p11_user --write-object "$WORK/hello.txt" --type data --label listed
out=$(p11_user -O)
echo "$out"
grep -q "label: *'listed'" <<<"$out" || fail "-O does not list the data object 'listed'"

step "a wrong secret is refused (CKR_PIN_INCORRECT)"
out=$(run_fails pkcs11-tool --module "$VAULTP11_MODULE" --login --pin "app:wrong-$SECRET" -O 2>&1) ||
  fail "a wrong secret was accepted"
echo "$out"
grep -q CKR_PIN_INCORRECT <<<"$out" || fail "a wrong secret did not give CKR_PIN_INCORRECT"

step "an unknown principal is refused (CKR_PIN_INCORRECT)"
out=$(run_fails pkcs11-tool --module "$VAULTP11_MODULE" --login --pin "nobody:$SECRET" -O 2>&1) ||
  fail "an unknown principal was accepted"
grep -q CKR_PIN_INCORRECT <<<"$out" || fail "an unknown principal did not give CKR_PIN_INCORRECT"

pass
