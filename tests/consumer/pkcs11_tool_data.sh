#!/usr/bin/env bash
# pkcs11-tool: data objects (the vault's secrets) written and read back byte for byte.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool
make_deployment

# Binary content with NUL bytes and no trailing newline.
head -c 777 /dev/urandom >"$WORK/blob.bin"
printf '\0\0\0' >>"$WORK/blob.bin"

step "write a data object"
p11_user --write-object "$WORK/blob.bin" --type data --label x
step "read it back in another process"
p11_user --read-object --type data --label x -o "$WORK/blob.out"
cmp "$WORK/blob.bin" "$WORK/blob.out" || fail "data object read back differs from what was written"
step "a data object written without --private is a vault secret all the same: no read without login"
rm -f "$WORK/blob.nologin"
run_fails pkcs11-tool --module "$VAULTP11_MODULE" --read-object --type data --label x -o "$WORK/blob.nologin"
if [[ -s $WORK/blob.nologin ]]; then fail "a data object was read without login"; fi

step "a private data object"
printf 'db-password-%s' "$(openssl rand -hex 8)" >"$WORK/secret.txt"
p11_user --write-object "$WORK/secret.txt" --type data --label y --private
p11_user --read-object --type data --label y -o "$WORK/secret.out"
cmp "$WORK/secret.txt" "$WORK/secret.out" || fail "private data object read back differs"
step "a private data object is not readable without login"
rm -f "$WORK/secret.nologin"
run_fails pkcs11-tool --module "$VAULTP11_MODULE" --read-object --type data --label y -o "$WORK/secret.nologin"
if [[ -s $WORK/secret.nologin ]] && cmp -s "$WORK/secret.txt" "$WORK/secret.nologin"; then
  fail "the private data object was read without login"
fi

step "a secret set by the CLI is read by pkcs11-tool; its new version replaces it by label"
head -c 300 /dev/urandom >"$WORK/v1.bin"
head -c 301 /dev/urandom >"$WORK/v2.bin"
run "$VAULTP11_CLI" --config "$CONF" secret set payments api-key --file "$WORK/v1.bin" --content-type application/octet-stream
p11_user --read-object --type data --label api-key -o "$WORK/api1.out"
cmp "$WORK/v1.bin" "$WORK/api1.out" || fail "the CLI's secret read through the module differs"
"$VAULTP11_CLI" --config "$CONF" secret set payments api-key <"$WORK/v2.bin" || fail "secret set from stdin failed"
p11_user --read-object --type data --label api-key -o "$WORK/api2.out"
cmp "$WORK/v2.bin" "$WORK/api2.out" || fail "the label does not find the new version"
"$VAULTP11_CLI" --config "$CONF" secret get payments api-key >"$WORK/api2.get" || fail "secret get failed"
cmp "$WORK/v2.bin" "$WORK/api2.get" || fail "secret get differs from the value set"
[[ $("$VAULTP11_CLI" --config "$CONF" secret list payments api-key --json | grep -c '"version"') == 2 ]] ||
  fail "secret list does not show two versions"
step "a secret written by pkcs11-tool is read by the CLI"
"$VAULTP11_CLI" --config "$CONF" secret get payments y >"$WORK/y.get" || fail "secret get y failed"
cmp "$WORK/secret.txt" "$WORK/y.get" || fail "secret get y differs"

step "-O lists both data objects"
out=$(p11_user -O)
echo "$out"
grep -q "label: *'x'" <<<"$out" || fail "-O does not list data object x"
grep -q "label: *'y'" <<<"$out" || fail "-O does not list data object y"

pass
