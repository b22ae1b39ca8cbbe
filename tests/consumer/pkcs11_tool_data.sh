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

step "-O lists both data objects"
out=$(p11_user -O)
echo "$out"
grep -q "label: *'x'" <<<"$out" || fail "-O does not list data object x"
grep -q "label: *'y'" <<<"$out" || fail "-O does not list data object y"

pass
