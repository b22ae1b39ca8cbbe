#!/usr/bin/env bash
# A premium vault whose keys live in a real SoftHSMv2 token: pkcs11-tool generates and signs
# with HSM keys, OpenSSL signs through the libp11 engine, and the private keys are found in the
# SoftHSM token (through SoftHSM's own module) and have no secret in the store. The vault has
# soft-delete: a deleted HSM key stays in the HSM until it is purged.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool sqlite3
VAULT_EXTRA_YAML=", soft_delete: { retention_days: 7 }"
make_hsm_deployment
engine_conf

head -c 1000 /dev/urandom >"$WORK/data.bin"
openssl dgst -sha256 -binary "$WORK/data.bin" >"$WORK/data.sha256"

step "HSM key pairs made with pkcs11-tool (the vault's default protection is hsm)"
p11_user --keypairgen --key-type rsa:2048 --label hsm-rsa --id 01
p11_user --keypairgen --key-type EC:prime256v1 --label hsm-ec --id 02
export_pubkey hsm-rsa "$WORK/rsa.pem"
export_pubkey hsm-ec "$WORK/ec.pem"

step "pkcs11-tool signs in the HSM; openssl verifies"
p11_user --sign --id 01 -m SHA256-RSA-PKCS -i "$WORK/data.bin" -o "$WORK/rsa.sig"
run openssl dgst -sha256 -verify "$WORK/rsa.pem" -signature "$WORK/rsa.sig" "$WORK/data.bin"
p11_user --sign --id 02 -m ECDSA-SHA256 --signature-format openssl -i "$WORK/data.bin" -o "$WORK/ec.sig"
run openssl dgst -sha256 -verify "$WORK/ec.pem" -signature "$WORK/ec.sig" "$WORK/data.bin"

step "openssl signs through the libp11 engine with the HSM keys"
ossl_engine dgst -engine pkcs11 -keyform engine -sha256 -sign 'pkcs11:token=payments;object=hsm-rsa;type=private' \
  -out "$WORK/eng-rsa.sig" "$WORK/data.bin"
run openssl dgst -sha256 -verify "$WORK/rsa.pem" -signature "$WORK/eng-rsa.sig" "$WORK/data.bin"
ossl_engine pkeyutl -engine pkcs11 -keyform engine -sign -inkey 'pkcs11:token=payments;object=hsm-ec;type=private' \
  -in "$WORK/data.sha256" -out "$WORK/eng-ec.sig"
run openssl pkeyutl -verify -pubin -inkey "$WORK/ec.pem" -in "$WORK/data.sha256" -sigfile "$WORK/eng-ec.sig"

step "the private keys are in the SoftHSM token, sensitive and never extractable"
out=$(run pkcs11-tool --module "$SOFTHSM_MODULE" --token-label vault-hsm --login --pin "$HSM_PIN" -O --type privkey)
echo "$out"
[[ $(grep -c '^Private Key Object' <<<"$out") == 2 ]] || fail "expected 2 private keys in the SoftHSM token"
[[ $(grep -c 'never extractable' <<<"$out") == 2 ]] || fail "the HSM private keys must be never extractable"

step "the store holds no key material for them"
n=$(run sqlite3 "$WORK/store.db" "SELECT count(*) FROM objects WHERE vault='payments' AND secret IS NOT NULL")
[[ $n == 0 ]] || fail "$n objects of the HSM vault have secret material in the store"

hsm_privkeys() {
  run pkcs11-tool --module "$SOFTHSM_MODULE" --token-label vault-hsm --login --pin "$HSM_PIN" -O --type privkey |
    grep -c '^Private Key Object' || true
}
step "pkcs11-tool deletes an HSM key: soft-deleted, still in the HSM, recoverable"
p11_user --delete-object --type privkey --id 02
run_fails pkcs11-tool --module "$VAULTP11_MODULE" --login --pin "$PIN" --read-object --type pubkey --label hsm-ec -o "$WORK/gone.der"
[[ $(hsm_privkeys) == 2 ]] || fail "a soft-deleted key must stay in the HSM"
out=$(run "$VAULTP11_CLI" --config "$CONF" deleted list payments)
grep -q '"hsm-ec"  Key  1 version' <<<"$out" || fail "deleted list does not show hsm-ec: $out"
run_fails pkcs11-tool --module "$VAULTP11_MODULE" --login --pin "$PIN" --keypairgen --key-type EC:prime256v1 --label hsm-ec --id 03
run "$VAULTP11_CLI" --config "$CONF" deleted recover payments hsm-ec
p11_user --sign --id 02 -m ECDSA-SHA256 --signature-format openssl -i "$WORK/data.bin" -o "$WORK/ec2.sig"
run openssl dgst -sha256 -verify "$WORK/ec.pem" -signature "$WORK/ec2.sig" "$WORK/data.bin"

step "purged: gone from the HSM too, and the name is free"
p11_user --delete-object --type privkey --id 02
run "$VAULTP11_CLI" --config "$CONF" deleted purge payments hsm-ec
[[ $(hsm_privkeys) == 1 ]] || fail "a purged key must be destroyed in the HSM"
p11_user --keypairgen --key-type EC:prime256v1 --label hsm-ec --id 04
pass
