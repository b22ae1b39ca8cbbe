#!/usr/bin/env bash
# Key versions and rotation with real clients: `vaultp11 key rotate` makes a new version that
# pkcs11-tool (by label) and a long-running process (without restart) use at once, while old
# signatures still verify with the old version's public key (found by its CKA_ID); rotation
# policies are checked; `vaultp11 lifecycle run` rotates what is due, once, even when two runs
# race (as on two hosts), notifies near expiry once, and purges deleted items after retention.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool
VAULT_YAML="{ name: payments, sku: standard, soft_delete: { retention_days: 7 } }"
make_deployment
cli() { run "$VAULTP11_CLI" --config "$CONF" "$@"; }
head -c 500 /dev/urandom >"$WORK/data.bin"

step "an EC key made by pkcs11-tool (no --id: its CKA_ID is its version's 16 bytes)"
p11_user --keypairgen --key-type EC:prime256v1 --label signer
export_pubkey signer "$WORK/v1.pem"
p11_user --sign --label signer -m ECDSA-SHA256 --signature-format openssl -i "$WORK/data.bin" -o "$WORK/v1.sig"
v1_id=$(p11_user -O --type pubkey --label signer | sed -n 's/^ *ID: *//p')
[[ ${#v1_id} == 32 ]] || fail "the generated CKA_ID is not 16 bytes: '$v1_id'"

start_find_later
before=$(ask "version signer")
[[ ${#before} == 32 ]] || fail "no version for signer: '$before'"

step "vaultp11 key rotate: a new current version"
out=$(cli key rotate payments signer)
echo "$out"
grep -q "version [0-9a-f]\{32\} is current (was $before)" <<<"$out" || fail "key rotate said: $out"
after=$(ask "version signer")
[[ $after != "$before" && ${#after} == 32 ]] || fail "the running process still sees version $after"
[[ $(p11_user -O --type privkey --label signer | grep -c '^Private Key Object') == 1 ]] ||
  fail "the label must find one private key (the current version)"

step "new signatures come from the new version (pkcs11-tool signs with the first private key a search finds: only current versions are found); the old one still verifies"
export_pubkey signer "$WORK/v2.pem"
cmp -s "$WORK/v1.pem" "$WORK/v2.pem" && fail "the rotated key has the old public key"
p11_user --sign --label signer -m ECDSA-SHA256 --signature-format openssl -i "$WORK/data.bin" -o "$WORK/v2.sig"
run openssl dgst -sha256 -verify "$WORK/v2.pem" -signature "$WORK/v2.sig" "$WORK/data.bin"
run_fails openssl dgst -sha256 -verify "$WORK/v1.pem" -signature "$WORK/v2.sig" "$WORK/data.bin"
p11 --read-object --type pubkey --id "$v1_id" -o "$WORK/v1-again.der"
run openssl pkey -pubin -inform DER -in "$WORK/v1-again.der" -out "$WORK/v1-again.pem"
cmp "$WORK/v1.pem" "$WORK/v1-again.pem" || fail "CKA_ID of version 1 does not find its public key"
run openssl dgst -sha256 -verify "$WORK/v1-again.pem" -signature "$WORK/v1.sig" "$WORK/data.bin"

step "rotation policies: impossible ones are refused"
for bad in "--rotate-after 3d" "--rotate-after 30d --rotate-before-expiry 10d" "--rotate-after 400d --expiry 365d" \
  "--notify-before-expiry 30d --expiry 20d" "--rotate-after soon"; do
  # shellcheck disable=SC2086  # the options split on purpose
  run_fails "$VAULTP11_CLI" --config "$CONF" key policy payments signer $bad
done
cli key policy payments signer --rotate-after 30d --notify-before-expiry 30d --expiry 365d
cli key policy payments signer | grep -q "rotate 30 days after creation, notify 30 days before expiry, new versions expire after 365 days" ||
  fail "key policy does not show the policy"

step "lifecycle run now: nothing is due"
cli lifecycle run | grep -q "0 rotated, 0 renewed, 0 notified, 0 purged" || fail "lifecycle run did something"

# race2 NAME [ARGS...]: two `lifecycle run`s at once; their outputs in $WORK/NAME-1.out, -2.out.
race2() {
  local name=$1
  shift
  "$VAULTP11_CLI" --config "$CONF" lifecycle run "$@" >"$WORK/$name-1.out" 2>&1 &
  local a=$!
  "$VAULTP11_CLI" --config "$CONF" lifecycle run "$@" >"$WORK/$name-2.out" 2>&1 &
  local b=$!
  wait "$a" || fail "lifecycle run failed: $(cat "$WORK/$name-1.out")"
  wait "$b" || fail "lifecycle run failed: $(cat "$WORK/$name-2.out")"
  cat "$WORK/$name-1.out" "$WORK/$name-2.out"
}

# Creation times are authenticated in the store (not moved back in the file), so the runs look 31
# days ahead with --at. A version the first run makes is "created" now, which is 31 days before
# that time too: a second run that starts after the first one committed rotates it in turn. What
# the race must never do is rotate one version twice (two new versions "was" the same one).
step "31 days on (lifecycle run --at): two runs at once never rotate one version twice"
race2 rotate --at "$(date -u -d '+31 days' +%Y-%m-%d)"
rotations=$(cat "$WORK/rotate-1.out" "$WORK/rotate-2.out" | grep -c '^rotated: ' || true)
[[ $rotations == 1 || $rotations == 2 ]] || fail "expected one or two rotations, got $rotations"
[[ $(cat "$WORK/rotate-1.out" "$WORK/rotate-2.out" | grep '^rotated: ' | sed 's/.*(was //' | sort -u | wc -l) == "$rotations" ]] ||
  fail "one version was rotated twice"
nversions=$((2 + rotations))
versions=$("$VAULTP11_CLI" --config "$CONF" list --json | grep -c '"label": "signer"')
[[ $versions == $((2 * nversions)) ]] || fail "expected $nversions versions of signer, got $versions objects"
third=$(ask "version signer")
[[ $third != "$after" ]] || fail "the running process did not pick up the policy's rotation"
cli lifecycle run | grep -q "0 rotated, 0 renewed, 0 notified" || fail "a later run rotated again"

step "near expiry (340 days on, notice only): two runs at once notify once; a later run does not"
cli key policy payments signer --notify-before-expiry 30d --expiry 365d
at=$(date -u -d '+340 days' +%Y-%m-%d)
race2 notify --at "$at"
[[ $(cat "$WORK/notify-1.out" "$WORK/notify-2.out" | grep -c '^notify: ') == 1 ]] || fail "expected exactly one notice"
cli lifecycle run --at "$at" | grep -q "0 rotated, 0 renewed, 0 notified" || fail "a later run notified again"
grep -q '"operationName":"KeyNearExpiry"' "$WORK/audit.log" || fail "no KeyNearExpiry event in the audit log"
[[ $(grep -c '"operationName":"KeyRotate"' "$WORK/audit.log") -ge 2 ]] || fail "KeyRotate events missing"

step "backup and restore: the key, deleted and purged, comes back with every version"
export_pubkey signer "$WORK/current.pem"
cli backup payments signer "$WORK/signer.backup" | grep -q "Key \"signer\" backed up to .* ($nversions versions)" ||
  fail "backup did not cover $nversions versions"
run_fails "$VAULTP11_CLI" --config "$CONF" restore payments "$WORK/signer.backup"
p11_user --delete-object --type privkey --label signer
cli deleted purge payments signer
[[ $(p11_user -O --type pubkey --label signer | grep -c '^Public Key Object') == 0 ]] || fail "signer is still there"
cli restore payments "$WORK/signer.backup" | grep -q "restored from .* ($nversions versions)" ||
  fail "restore did not say $nversions versions"
export_pubkey signer "$WORK/restored.pem"
cmp "$WORK/current.pem" "$WORK/restored.pem" || fail "the restored current version is another key"
p11 --read-object --type pubkey --id "$v1_id" -o "$WORK/v1-restored.der"
run openssl pkey -pubin -inform DER -in "$WORK/v1-restored.der" -out "$WORK/v1-restored.pem"
run openssl dgst -sha256 -verify "$WORK/v1-restored.pem" -signature "$WORK/v1.sig" "$WORK/data.bin"
p11_user --sign --label signer -m ECDSA-SHA256 --signature-format openssl -i "$WORK/data.bin" -o "$WORK/v3.sig"
run openssl dgst -sha256 -verify "$WORK/restored.pem" -signature "$WORK/v3.sig" "$WORK/data.bin"
grep -q '"operationName":"KeyRestore"' "$WORK/audit.log" || fail "no KeyRestore event in the audit log"

step "a deleted item is purged by lifecycle run once its retention is over"
printf 'v' | "$VAULTP11_CLI" --config "$CONF" secret set payments old-secret >/dev/null
cli secret delete payments old-secret
cli lifecycle run | grep -q "0 purged" || fail "purged before the retention ended"
cli lifecycle run --at "$(date -u -d '+8 days' +%Y-%m-%d)" | grep -q "1 purged" || fail "not purged after retention"
[[ -z $(cli deleted list payments) ]] || fail "the deleted list is not empty after the purge"
pass
