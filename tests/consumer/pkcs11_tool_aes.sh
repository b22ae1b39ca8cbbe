#!/usr/bin/env bash
# pkcs11-tool: AES-256 key generation and an AES-CBC-PAD encrypt/decrypt round trip.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool
make_deployment

iv=000102030405060708090a0b0c0d0e0f
head -c 1000 /dev/urandom >"$WORK/plain.bin"

step "generate an AES-256 key (sensitive, private)"
out=$(p11_user --keygen --key-type AES:32 --label aes-key --id 10 --sensitive --private)
echo "$out"
grep -q 'Secret Key Object; AES length 32' <<<"$out" || fail "no 32-byte AES key was generated"
grep -q 'Access: *sensitive, always sensitive, never extractable' <<<"$out" ||
  fail "the AES key is not sensitive and non-extractable"

step "the private key object is not listed without login"
out=$(p11 -O)
echo "$out"
grep -q 'Secret Key Object' <<<"$out" && fail "a private AES key is listed without login"

step "its value cannot be read (CKR_ATTRIBUTE_SENSITIVE)"
out=$(run_fails pkcs11-tool --module "$VAULTP11_MODULE" --login --pin "$PIN" --read-object --type secrkey \
  --id 10 -o "$WORK/key.bin" 2>&1) || fail "the AES key value was read"
echo "$out"
grep -q CKR_ATTRIBUTE_SENSITIVE <<<"$out" || fail "reading the AES key value did not give CKR_ATTRIBUTE_SENSITIVE"

step "encrypt with AES-CBC-PAD"
p11_user --encrypt -m AES-CBC-PAD --iv "$iv" --id 10 -i "$WORK/plain.bin" -o "$WORK/cipher.bin"
[[ $(stat -c %s "$WORK/cipher.bin") == 1008 ]] || fail "ciphertext of 1000 bytes is not 1008 bytes"
cmp -s "$WORK/plain.bin" "$WORK/cipher.bin" && fail "ciphertext equals plaintext"

step "decrypt in another process; the round trip gives the plaintext back"
p11_user --decrypt -m AES-CBC-PAD --iv "$iv" --id 10 -i "$WORK/cipher.bin" -o "$WORK/decrypted.bin"
cmp "$WORK/plain.bin" "$WORK/decrypted.bin" || fail "decrypted text differs from the plaintext"

step "decrypting with another IV does not give the plaintext back"
# (CBC: only the first block differs; the padding of the last block stays valid.)
p11_user --decrypt -m AES-CBC-PAD --iv 0f0e0d0c0b0a09080706050403020100 --id 10 \
  -i "$WORK/cipher.bin" -o "$WORK/wrong.bin"
cmp -s "$WORK/plain.bin" "$WORK/wrong.bin" && fail "a wrong IV decrypted to the plaintext"
cmp -s <(tail -c +17 "$WORK/plain.bin") <(tail -c +17 "$WORK/wrong.bin") ||
  fail "a wrong IV changed more than the first block"

pass
