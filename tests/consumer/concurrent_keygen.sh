#!/usr/bin/env bash
# Two processes generate keys in one store at the same time; afterwards every key is listed
# exactly once and every key still works.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool
make_deployment

# gen TAG ID_PREFIX: 4 EC P-256 pairs and 1 RSA-2048 pair, labels TAG-ec1..4 and TAG-rsa.
gen() {
  local tag=$1 idp=$2 i
  for i in 1 2 3 4; do
    pkcs11-tool --module "$VAULTP11_MODULE" --login --pin "$PIN" --keypairgen \
      --key-type EC:prime256v1 --label "$tag-ec$i" --id "${idp}0$i" || return 1
  done
  pkcs11-tool --module "$VAULTP11_MODULE" --login --pin "$PIN" --keypairgen \
    --key-type rsa:2048 --label "$tag-rsa" --id "${idp}05" || return 1
}

step "two pkcs11-tool processes generate keys concurrently"
gen a a0 >"$WORK/a.log" 2>&1 &
pa=$!
gen b b0 >"$WORK/b.log" 2>&1 &
pb=$!
rca=0 rcb=0
wait "$pa" || rca=$?
wait "$pb" || rcb=$?
cat "$WORK/a.log" "$WORK/b.log"
((rca == 0)) || fail "process a failed (exit $rca)"
((rcb == 0)) || fail "process b failed (exit $rcb)"

step "-O lists every key exactly once"
out=$(p11_user -O)
echo "$out"
[[ $(grep -c '^Private Key Object' <<<"$out") == 10 ]] || fail "expected 10 private keys"
[[ $(grep -c '^Public Key Object' <<<"$out") == 10 ]] || fail "expected 10 public keys"
for tag in a b; do
  for l in ec1 ec2 ec3 ec4 rsa; do
    [[ $(grep -c "^ *label: *$tag-$l\$" <<<"$out") == 2 ]] || fail "label $tag-$l is not listed exactly twice"
  done
done

step "keys from both processes sign, and the signatures verify"
printf 'concurrent' >"$WORK/data.bin"
for key in a-ec3:a003 b-ec4:b004; do
  label=${key%%:*} id=${key##*:}
  export_pubkey "$label" "$WORK/$label.pem"
  p11_user --sign -m ECDSA-SHA256 --id "$id" --signature-format openssl -i "$WORK/data.bin" -o "$WORK/$label.sig"
  run openssl dgst -sha256 -verify "$WORK/$label.pem" -signature "$WORK/$label.sig" "$WORK/data.bin"
done
for key in a-rsa:a005 b-rsa:b005; do
  label=${key%%:*} id=${key##*:}
  export_pubkey "$label" "$WORK/$label.pem"
  p11_user --sign -m SHA256-RSA-PKCS --id "$id" -i "$WORK/data.bin" -o "$WORK/$label.sig"
  run openssl dgst -sha256 -verify "$WORK/$label.pem" -signature "$WORK/$label.sig" "$WORK/data.bin"
done

step "the store passes SQLite's integrity check"
if command -v sqlite3 >/dev/null 2>&1; then
  [[ $(sqlite3 "$WORK/store.db" 'PRAGMA integrity_check;') == ok ]] || fail "store.db fails PRAGMA integrity_check"
fi

pass
