#!/usr/bin/env bash
# A managed HSM pool over three real SoftHSMv2 tokens: `vaultp11 pool init` installs the
# security domain, pkcs11-tool (as a Managed HSM Crypto User) generates EC P-256 and RSA-2048
# key pairs in the pool and signs with them (ECDSA-SHA256, raw ECDSA, SHA256-RSA-PKCS,
# SHA256-RSA-PKCS-PSS), OpenSSL signs through the libp11 engine with pkcs11: URIs naming the
# pool token, and plain OpenSSL verifies everything against the public keys read back from the
# pool. Through SoftHSM's own module, every member token holds both private keys under the same
# inner CKA_ID, each member's copy signs by itself for the pool's public key, and the store
# holds no key material for the pool.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool sqlite3 od
POOL=hsmpool
make_pool_deployment "$POOL" 3
engine_conf

head -c 1000 /dev/urandom >"$WORK/data.bin"
openssl dgst -sha256 -binary "$WORK/data.bin" >"$WORK/data.sha256"

pool() { p11 --token-label "$POOL" "$@"; }
pool_user() { p11_user --token-label "$POOL" "$@"; }
# member TOKEN ARGS...: pkcs11-tool on a member token through SoftHSM's own module, as its user.
member() {
  local t=$1
  shift
  run pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$t" --login --pin "$HSM_PIN" "$@"
}
# der_ecdsa RAW OUT: a PKCS#11 r||s ECDSA signature (P-256) as the DER that OpenSSL verifies.
der_ecdsa() {
  local r s
  [[ $(stat -c %s "$1") == 64 ]] || fail "raw P-256 ECDSA signature $1 is not 64 bytes"
  r=$(head -c 32 "$1" | od -An -tx1 | tr -d ' \n')
  s=$(tail -c 32 "$1" | od -An -tx1 | tr -d ' \n')
  printf 'asn1=SEQUENCE:sig\n[sig]\nr=INTEGER:0x%s\ns=INTEGER:0x%s\n' "$r" "$s" >"$2.asn1"
  run openssl asn1parse -genconf "$2.asn1" -out "$2" -noout
}

step "the pool is a token of its own, after the vault"
out=$(p11 -L)
echo "$out"
grep -q "token label *: $POOL\$" <<<"$out" || fail "no token labelled $POOL"
grep -q 'token model *: managed HSM pool$' <<<"$out" || fail "the pool's token model is not 'managed HSM pool'"

step "key generation before the security domain is installed fails"
run_fails pkcs11-tool --module "$VAULTP11_MODULE" --token-label "$POOL" --login --pin "$PIN" \
  --keypairgen --key-type EC:prime256v1 --label too-early --id 09

step "vaultp11 pool init installs the security domain on the three members (SO PINs from so_pin_file)"
out=$(run "$VAULTP11_CLI" pool init "$POOL")
echo "$out"
grep -q "security domain ready on 3 members" <<<"$out" || fail "pool init did not report the domain on 3 members"
for t in "${POOL_TOKENS[@]}"; do
  out=$(member "$t" -O --type secrkey)
  grep -q 'label: *vaultp11-security-domain' <<<"$out" || fail "member $t holds no security-domain key after pool init"
done
out=$(run "$VAULTP11_CLI" pool init "$POOL")
echo "$out"
grep -q "already on all 3 members" <<<"$out" || fail "a second pool init must find the domain on all 3 members"

step "pkcs11-tool lists the pool's HSM mechanisms"
out=$(pool -M)
for m in ECDSA-KEY-PAIR-GEN ECDSA ECDSA-SHA256 RSA-PKCS-KEY-PAIR-GEN SHA256-RSA-PKCS SHA256-RSA-PKCS-PSS; do
  grep -q "^  $m," <<<"$out" || fail "the pool does not list mechanism $m"
done

step "pkcs11-tool generates an EC P-256 and an RSA-2048 key pair in the pool"
pool_user --keypairgen --key-type EC:prime256v1 --label pool-ec --id 01
pool_user --keypairgen --key-type rsa:2048 --label pool-rsa --id 02

step "-O on the pool token lists both pairs, sensitive and never extractable"
out=$(pool_user -O)
echo "$out"
[[ $(grep -c '^Private Key Object' <<<"$out") == 2 ]] || fail "expected 2 private keys in the pool"
[[ $(grep -c '^Public Key Object' <<<"$out") == 2 ]] || fail "expected 2 public keys in the pool"
grep -q '^Public Key Object; RSA 2048 bits' <<<"$out" || fail "the pool's RSA public key is not 2048 bits"
grep -q 'EC_PARAMS: *06082a8648ce3d030107' <<<"$out" || fail "the pool's EC key is not on prime256v1"
[[ $(grep -c 'Access: .*never extractable' <<<"$out") == 2 ]] || fail "the pool's private keys must be never extractable"
[[ $(grep -c 'Access: *sensitive' <<<"$out") == 2 ]] || fail "the pool's private keys must be sensitive"

step "the public keys, read back from the pool"
p11 --token-label "$POOL" --read-object --type pubkey --label pool-ec -o "$WORK/ec.der"
run openssl pkey -pubin -inform DER -in "$WORK/ec.der" -out "$WORK/ec.pem"
p11 --token-label "$POOL" --read-object --type pubkey --label pool-rsa -o "$WORK/rsa.der"
run openssl pkey -pubin -inform DER -in "$WORK/rsa.der" -out "$WORK/rsa.pem"
grep -q 'NIST CURVE: P-256' <<<"$(run openssl pkey -pubin -in "$WORK/ec.pem" -noout -text)" ||
  fail "the exported EC key is not P-256"
grep -q 'Public-Key: (2048 bit)' <<<"$(run openssl pkey -pubin -in "$WORK/rsa.pem" -noout -text)" ||
  fail "the exported RSA key is not 2048 bits"

step "pkcs11-tool signs with ECDSA-SHA256 in the pool; openssl verifies"
pool_user --sign --id 01 -m ECDSA-SHA256 --signature-format openssl -i "$WORK/data.bin" -o "$WORK/ec.sig"
run openssl dgst -sha256 -verify "$WORK/ec.pem" -signature "$WORK/ec.sig" "$WORK/data.bin"

step "pkcs11-tool signs a SHA-256 digest with raw ECDSA in the pool; openssl verifies"
pool_user --sign --id 01 -m ECDSA -i "$WORK/data.sha256" -o "$WORK/ec-raw.sig"
der_ecdsa "$WORK/ec-raw.sig" "$WORK/ec-raw.der"
run openssl pkeyutl -verify -pubin -inkey "$WORK/ec.pem" -in "$WORK/data.sha256" -sigfile "$WORK/ec-raw.der"

step "pkcs11-tool signs with SHA256-RSA-PKCS in the pool; openssl verifies"
pool_user --sign --id 02 -m SHA256-RSA-PKCS -i "$WORK/data.bin" -o "$WORK/rsa.sig"
[[ $(stat -c %s "$WORK/rsa.sig") == 256 ]] || fail "the RSA-2048 signature is not 256 bytes"
run openssl dgst -sha256 -verify "$WORK/rsa.pem" -signature "$WORK/rsa.sig" "$WORK/data.bin"

step "pkcs11-tool signs with SHA256-RSA-PKCS-PSS in the pool; openssl verifies"
pool_user --sign --id 02 -m SHA256-RSA-PKCS-PSS --mgf MGF1-SHA256 --salt-len -1 \
  -i "$WORK/data.bin" -o "$WORK/rsa-pss.sig"
run openssl dgst -sha256 -verify "$WORK/rsa.pem" -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:digest \
  -signature "$WORK/rsa-pss.sig" "$WORK/data.bin"

step "a signature over other data does not verify"
printf 'other' >"$WORK/other.bin"
run_fails openssl dgst -sha256 -verify "$WORK/rsa.pem" -signature "$WORK/rsa.sig" "$WORK/other.bin"
run_fails openssl dgst -sha256 -verify "$WORK/ec.pem" -signature "$WORK/ec.sig" "$WORK/other.bin"

step "openssl signs through the libp11 engine with the pool's keys"
ec_uri="pkcs11:token=$POOL;object=pool-ec;type=private"
rsa_uri="pkcs11:token=$POOL;object=pool-rsa;type=private"
ossl_engine pkeyutl -engine pkcs11 -keyform engine -sign -inkey "$ec_uri" \
  -in "$WORK/data.sha256" -out "$WORK/eng-ec.sig"
run openssl pkeyutl -verify -pubin -inkey "$WORK/ec.pem" -in "$WORK/data.sha256" -sigfile "$WORK/eng-ec.sig"
ossl_engine dgst -engine pkcs11 -keyform engine -sha256 -sign "$ec_uri" -out "$WORK/eng-ec-dgst.sig" "$WORK/data.bin"
run openssl dgst -sha256 -verify "$WORK/ec.pem" -signature "$WORK/eng-ec-dgst.sig" "$WORK/data.bin"
ossl_engine pkeyutl -engine pkcs11 -keyform engine -sign -inkey "$rsa_uri" \
  -pkeyopt digest:sha256 -in "$WORK/data.sha256" -out "$WORK/eng-rsa.sig"
run openssl pkeyutl -verify -pubin -inkey "$WORK/rsa.pem" -pkeyopt digest:sha256 \
  -in "$WORK/data.sha256" -sigfile "$WORK/eng-rsa.sig"
ossl_engine dgst -engine pkcs11 -keyform engine -sha256 -sign "$rsa_uri" -out "$WORK/eng-rsa-dgst.sig" "$WORK/data.bin"
run openssl dgst -sha256 -verify "$WORK/rsa.pem" -signature "$WORK/eng-rsa-dgst.sig" "$WORK/data.bin"

step "openssl req -new -x509 with the pool's EC key"
ossl_engine req -new -x509 -engine pkcs11 -keyform engine -key "$ec_uri" -sha256 -days 30 \
  -subj "/CN=vaultp11 managed HSM pool EC" -out "$WORK/ec-cert.pem"
run openssl verify -CAfile "$WORK/ec-cert.pem" "$WORK/ec-cert.pem"
run openssl x509 -in "$WORK/ec-cert.pem" -noout -pubkey -out "$WORK/ec-cert-pub.pem"
cmp "$WORK/ec-cert-pub.pem" "$WORK/ec.pem" || fail "the certificate's key is not the pool's EC key"

step "every member token holds both private keys, under the same inner CKA_ID"
first_ids=""
for t in "${POOL_TOKENS[@]}"; do
  out=$(member "$t" -O --type privkey)
  echo "$out"
  [[ $(grep -c '^Private Key Object' <<<"$out") == 2 ]] || fail "member $t does not hold exactly 2 private keys"
  grep -q '^Private Key Object; EC' <<<"$out" || fail "member $t holds no EC private key"
  grep -q '^Private Key Object; RSA' <<<"$out" || fail "member $t holds no RSA private key"
  ids=$(sed -n 's/^ *ID: *//p' <<<"$out" | sort | tr '\n' ' ')
  [[ $(wc -w <<<"$ids") == 2 ]] || fail "member $t: expected 2 inner CKA_IDs, got '$ids'"
  if [[ -z $first_ids ]]; then
    first_ids=$ids
  else
    [[ $ids == "$first_ids" ]] || fail "member $t holds inner IDs '$ids', the first member '$first_ids'"
  fi
done

step "each member's copy signs by itself (SoftHSM's module) for the pool's public keys"
for t in "${POOL_TOKENS[@]}"; do
  out=$(member "$t" -O --type pubkey)
  ec_id=$(awk '/^Public Key Object; EC/ { f = 1 } f && /^ *ID:/ { print $2; exit }' <<<"$out")
  rsa_id=$(awk '/^Public Key Object; RSA/ { f = 1 } f && /^ *ID:/ { print $2; exit }' <<<"$out")
  [[ -n $ec_id && -n $rsa_id ]] || fail "member $t: no EC and RSA public keys found"
  member "$t" --read-object --type pubkey --id "$ec_id" -o "$WORK/$t-ec.der"
  member "$t" --read-object --type pubkey --id "$rsa_id" -o "$WORK/$t-rsa.der"
  run openssl pkey -pubin -inform DER -in "$WORK/$t-ec.der" -out "$WORK/$t-ec.pem"
  run openssl pkey -pubin -inform DER -in "$WORK/$t-rsa.der" -out "$WORK/$t-rsa.pem"
  cmp -s "$WORK/$t-ec.pem" "$WORK/ec.pem" || fail "member $t's EC public key is not the pool's"
  cmp -s "$WORK/$t-rsa.pem" "$WORK/rsa.pem" || fail "member $t's RSA public key is not the pool's"
  # SoftHSMv2 2.6 has no CKM_ECDSA_SHA256: raw ECDSA over the digest.
  member "$t" --sign --id "$ec_id" -m ECDSA -i "$WORK/data.sha256" -o "$WORK/$t-ec.raw"
  der_ecdsa "$WORK/$t-ec.raw" "$WORK/$t-ec.sig"
  run openssl pkeyutl -verify -pubin -inkey "$WORK/ec.pem" -in "$WORK/data.sha256" -sigfile "$WORK/$t-ec.sig"
  member "$t" --sign --id "$rsa_id" -m SHA256-RSA-PKCS -i "$WORK/data.bin" -o "$WORK/$t-rsa.sig"
  run openssl dgst -sha256 -verify "$WORK/rsa.pem" -signature "$WORK/$t-rsa.sig" "$WORK/data.bin"
done

step "the store holds no key material for the pool"
n=$(run sqlite3 "$WORK/store.db" "SELECT count(*) FROM objects WHERE vault='$POOL'")
[[ $n == 4 ]] || fail "expected the pool's 4 objects in the store, found $n"
n=$(run sqlite3 "$WORK/store.db" "SELECT count(*) FROM objects WHERE vault='$POOL' AND secret IS NOT NULL")
[[ $n == 0 ]] || fail "$n objects of the pool have secret material in the store"

step "pkcs11-tool deletes the EC pair; every member's copy is gone"
pool_user --delete-object --type privkey --id 01
pool_user --delete-object --type pubkey --id 01
for t in "${POOL_TOKENS[@]}"; do
  out=$(member "$t" -O --type privkey)
  [[ $(grep -c '^Private Key Object' <<<"$out") == 1 ]] || fail "member $t still holds the deleted EC private key"
  if grep -q '^Private Key Object; EC' <<<"$out"; then fail "member $t still holds an EC private key"; fi
done
out=$(pool_user -O)
[[ $(grep -c '^Private Key Object' <<<"$out") == 1 ]] || fail "the pool still lists the deleted EC private key"
pool_user --sign --id 02 -m SHA256-RSA-PKCS -i "$WORK/data.bin" -o "$WORK/rsa2.sig"
run openssl dgst -sha256 -verify "$WORK/rsa.pem" -signature "$WORK/rsa2.sig" "$WORK/data.bin"
pass
