#!/usr/bin/env bash
# Remote use through p11-kit server: one process exports the vaults (`p11-kit server --provider
# libvaultp11.so pkcs11:token=...`) on a unix socket and clients load p11-kit-client.so instead
# of the module. Through the socket pkcs11-tool lists the tokens, logs in with principal PINs (a
# wrong one is refused, a reader's role still applies), signs with RSA (PKCS#1 v1.5, PSS) and EC
# keys, HSM-backed and software, and decrypts (OAEP, PKCS#1 v1.5); openssl checks every result
# with the public keys. Mechanisms the socket does not list (p11-kit 0.24's RPC drops those whose
# parameters it cannot carry) are refused with CKR_MECHANISM_INVALID, and their replacement
# (hash here, CKM_ECDSA / CKM_RSA_PKCS_PSS there) works.
#
# As root, the same deployment is a boundary between local users: the store, the master key,
# the PIN files and the SoftHSM token belong to a dedicated uid (no passwd entry) that alone
# runs the server; a client under another uid signs through the socket but can read none of
# those files nor use the module in-process, a uid not admitted to the socket cannot connect,
# and a managed identity is decided by the server's uid, not the client's.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool p11-kit

CLIENT_MODULE=${P11KIT_CLIENT_MODULE:-}
if [[ -z $CLIENT_MODULE ]]; then
  for d in "$(pkg-config --variable=p11_module_path p11-kit-1 2>/dev/null || true)" \
    "/usr/lib/$(uname -m)-linux-gnu/pkcs11" /usr/lib64/pkcs11 /usr/lib/pkcs11; do
    [[ -n $d && -f $d/p11-kit-client.so ]] && CLIENT_MODULE=$d/p11-kit-client.so && break
  done
fi
[[ -n $CLIENT_MODULE && -f $CLIENT_MODULE ]] || skip "p11-kit-client.so (Debian p11-kit-modules) is not installed"

PRIVSEP=0
if ((EUID == 0)); then
  need setpriv
  PRIVSEP=1
  # Numeric ids with no passwd or group entry: the server's, an admitted client's, an outsider's.
  free_id() {
    local n=$1
    while getent passwd "$n" >/dev/null || getent group "$n" >/dev/null; do n=$((n + 1)); done
    echo "$n"
  }
  SRV_ID=$(free_id 64000)
  CL_ID=$(free_id $((SRV_ID + 1)))
  OUT_ID=$(free_id $((CL_ID + 1)))
  # as_uid ID CMD...: CMD as uid and gid ID, with no other groups.
  as_uid() { local id=$1; shift; setpriv --reuid="$id" --regid="$id" --clear-groups env HOME="$WORK/home-$id" "$@"; }
else
  echo "SKIP ($TEST_NAME, privilege separation only): not root, so no server and clients under other uids; the rest runs"
fi

# A second principal with only Key Vault Reader; its secret is masked like the app's.
READER_SECRET=$(openssl rand -hex 12)
MASKED+=("$READER_SECRET")
READER_PIN="reader:$READER_SECRET"
reader_hash=$(printf '%s' "$READER_SECRET" | "$VAULTP11_CLI" hash-secret --cost-log2n 10) || fail "hash-secret failed"
EXTRA_VAULTS_YAML="  - { name: dev, sku: standard }"
EXTRA_PRINCIPALS_YAML="  - name: reader
    auth: client_secret
    secrets: [ { hash: \"$reader_hash\", expires: 2099-12-31 } ]"
EXTRA_ROLES_YAML="  - { principal: app, role: Key Vault Administrator, scope: /vaults/dev }
  - { principal: reader, role: Key Vault Reader, scope: /vaults/payments }
  - { principal: reader, role: Key Vault Reader, scope: /vaults/dev }"
if ((PRIVSEP)); then
  # One managed identity for the server's uid (reader on dev), one for the client's (admin on
  # payments): only the first can ever log in through the socket.
  EXTRA_PRINCIPALS_YAML+="
  - { name: server-mi, auth: managed_identity, uid: $SRV_ID }
  - { name: client-mi, auth: managed_identity, uid: $CL_ID }"
  EXTRA_ROLES_YAML+="
  - { principal: server-mi, role: Key Vault Reader, scope: /vaults/dev }
  - { principal: client-mi, role: Key Vault Administrator, scope: /vaults/payments }"
fi
# "payments": premium, its key pairs in the SoftHSM token; "dev": standard, software keys.
make_hsm_deployment

head -c 1000 /dev/urandom >"$WORK/data.bin"
openssl dgst -sha256 -binary "$WORK/data.bin" >"$WORK/data.sha256"
head -c 32 /dev/urandom >"$WORK/plain.bin"

RUN_DIR="$WORK/run"
SOCK="$RUN_DIR/p11-kit.sock"
SERVER_AS=()
if ((PRIVSEP)); then
  step "privilege separation: the deployment belongs to uid $SRV_ID (server); clients run as $CL_ID, $OUT_ID"
  mkdir -p "$RUN_DIR" "$WORK/client" "$WORK/home-$SRV_ID" "$WORK/home-$CL_ID" "$WORK/home-$OUT_ID"
  cp "$CONF" "$WORK/client/vaultp11.yaml"  # what a local user could have: the config, not the files
  chown -R "$SRV_ID:$SRV_ID" "$WORK"
  chown -R "$CL_ID:$CL_ID" "$WORK/client" "$WORK/home-$CL_ID"
  chown "$OUT_ID:$OUT_ID" "$WORK/home-$OUT_ID"
  chmod 0711 "$WORK"  # others may pass through (to the socket), never list or read
  chmod 0700 "$WORK/tokens" "$WORK/client"
  chmod 0600 "$WORK/store.db" "$WORK/store.db.masterkey" "$WORK/hsm.pin" "$WORK/softhsm2.conf" \
    "$WORK/audit.log" "$CONF"
  # The socket's directory admits the client's group only; the socket itself is opened up by
  # its owner once it exists (p11-kit creates it 0711: owner only).
  chown "$SRV_ID:$CL_ID" "$RUN_DIR"
  chmod 0710 "$RUN_DIR"
  # Words, not the function: started in the background, $! is then the server's own pid.
  SERVER_AS=(setpriv --reuid="$SRV_ID" --regid="$SRV_ID" --clear-groups env HOME="$WORK/home-$SRV_ID")
fi

step "p11-kit server exports payments and dev on $SOCK"
mkdir -p "$RUN_DIR"
"${SERVER_AS[@]}" p11-kit server -f -n "$SOCK" --provider "$VAULTP11_MODULE" \
  "pkcs11:token=payments" "pkcs11:token=dev" >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!
BG_PIDS+=("$SERVER_PID")
for ((i = 0; i < 200; i++)); do
  [[ -S $SOCK ]] && break
  kill -0 "$SERVER_PID" 2>/dev/null || fail "p11-kit server exited: $(cat "$WORK/server.err")"
  sleep 0.05
done
[[ -S $SOCK ]] || fail "p11-kit server made no socket $SOCK within 10 s"
if ((PRIVSEP)); then
  [[ $(stat -c %u "$SOCK") == "$SRV_ID" ]] || fail "the socket is not the server uid's: $(stat -c '%U %a' "$SOCK")"
  run as_uid "$SRV_ID" chmod 0666 "$SOCK"
fi
export P11_KIT_SERVER_ADDRESS="unix:path=$SOCK"

# remote ARGS...: pkcs11-tool through the socket (as CLIENT_AS, the invoking user by default).
CLIENT_AS=()
remote() { run "${CLIENT_AS[@]}" pkcs11-tool --module "$CLIENT_MODULE" "$@"; }
remote_fails() { run_fails "${CLIENT_AS[@]}" pkcs11-tool --module "$CLIENT_MODULE" "$@"; }

step "the socket lists both vaults' tokens"
slots=$(remote -L)
echo "$slots"
grep -q 'token label *: payments$' <<<"$slots" || fail "token payments is not listed through the socket"
grep -q 'token label *: dev$' <<<"$slots" || fail "token dev is not listed through the socket"

step "principal logins through the socket: a wrong PIN is refused"
out=$(remote_fails --token-label payments --login --pin "app:wrong-$SECRET" -O 2>&1) || true
grep -q CKR_PIN_INCORRECT <<<"$out" || fail "a wrong PIN through the socket gave: $out"

step "key pairs made through the socket: HSM keys in payments, software keys in dev"
remote --token-label payments --login --pin "$PIN" --keypairgen --key-type rsa:2048 --label hsm-rsa --id 01 >/dev/null
remote --token-label payments --login --pin "$PIN" --keypairgen --key-type EC:prime256v1 --label hsm-ec --id 02 >/dev/null
remote --token-label dev --login --pin "$PIN" --keypairgen --key-type rsa:2048 --label sw-rsa --id 11 >/dev/null
remote --token-label dev --login --pin "$PIN" --keypairgen --key-type EC:prime256v1 --label sw-ec --id 12 >/dev/null
for k in payments:hsm-rsa payments:hsm-ec dev:sw-rsa dev:sw-ec; do
  remote --token-label "${k%%:*}" --read-object --type pubkey --label "${k#*:}" -o "$WORK/${k#*:}.der"
  run openssl pkey -pubin -inform DER -in "$WORK/${k#*:}.der" -out "$WORK/${k#*:}.pem"
done
# (As the server's uid: SoftHSM files made by another would lock the server out.)
hsm=$(run "${SERVER_AS[@]}" pkcs11-tool --module "$SOFTHSM_MODULE" --token-label vault-hsm \
  --login --pin "$HSM_PIN" -O --type privkey)
[[ $(grep -c '^Private Key Object' <<<"$hsm") == 2 ]] || fail "expected the 2 payments private keys in the SoftHSM token: $hsm"

mechs=$(remote --token-label dev -M)
listed() { grep -q "^ *$1," <<<"$mechs"; }

step "RSA signatures through the socket, checked by openssl"
for t in payments:01:hsm-rsa dev:11:sw-rsa; do
  IFS=: read -r tok id label <<<"$t"
  remote --token-label "$tok" --login --pin "$PIN" --sign --id "$id" -m SHA256-RSA-PKCS \
    -i "$WORK/data.bin" -o "$WORK/$label.sig"
  run openssl dgst -sha256 -verify "$WORK/$label.pem" -signature "$WORK/$label.sig" "$WORK/data.bin"
  # PSS with its parameters over a SHA-256 digest made here.
  remote --token-label "$tok" --login --pin "$PIN" --sign --id "$id" -m RSA-PKCS-PSS --hash-algorithm SHA256 \
    --mgf MGF1-SHA256 --salt-len 32 -i "$WORK/data.sha256" -o "$WORK/$label.pss"
  run openssl pkeyutl -verify -pubin -inkey "$WORK/$label.pem" -in "$WORK/data.sha256" -sigfile "$WORK/$label.pss" \
    -pkeyopt rsa_padding_mode:pss -pkeyopt rsa_pss_saltlen:32 -pkeyopt digest:sha256
done

step "ECDSA through the socket: CKM_ECDSA over a SHA-256 digest made here, checked by openssl"
for t in payments:02:hsm-ec dev:12:sw-ec; do
  IFS=: read -r tok id label <<<"$t"
  remote --token-label "$tok" --login --pin "$PIN" --sign --id "$id" -m ECDSA --signature-format openssl \
    -i "$WORK/data.sha256" -o "$WORK/$label.sig"
  run openssl dgst -sha256 -verify "$WORK/$label.pem" -signature "$WORK/$label.sig" "$WORK/data.bin"
done

step "mechanisms the socket does not list are refused, those it lists work"
# The module offers them all in-process; p11-kit 0.24 forwards only mechanisms whose
# parameters its RPC knows, and leaves the others out of C_GetMechanismList.
for t in ECDSA-SHA256:12 SHA256-RSA-PKCS-PSS:11; do
  m=${t%%:*} id=${t#*:}
  if listed "$m"; then
    remote --token-label dev --login --pin "$PIN" --sign --id "$id" -m "$m" --signature-format openssl \
      -i "$WORK/data.bin" -o "$WORK/$m.sig"
    echo "$m passes through this p11-kit"
  else
    out=$(remote_fails --token-label dev --login --pin "$PIN" --sign --id "$id" -m "$m" \
      --signature-format openssl -i "$WORK/data.bin" -o "$WORK/$m.sig" 2>&1) || true
    grep -q CKR_MECHANISM_INVALID <<<"$out" || fail "$m, not listed through the socket, gave: $out"
    echo "$m is not carried by this p11-kit (CKR_MECHANISM_INVALID)"
  fi
done
direct=$(VAULTP11_DEBUG=0 run "${SERVER_AS[@]}" pkcs11-tool --module "$VAULTP11_MODULE" --token-label dev -M)
grep -q '^ *ECDSA-SHA256,' <<<"$direct" || fail "the module itself does not offer ECDSA-SHA256"

step "decryption through the socket: OAEP and PKCS#1 v1.5 of data openssl encrypted"
# OAEP with SHA-1 for the HSM key (all SoftHSMv2 2.6 implements), SHA-256 for the software one.
for t in payments:01:hsm-rsa:sha1:SHA-1:MGF1-SHA1 dev:11:sw-rsa:sha256:SHA256:MGF1-SHA256; do
  IFS=: read -r tok id label md hash mgf <<<"$t"
  run openssl pkeyutl -encrypt -pubin -inkey "$WORK/$label.pem" -in "$WORK/plain.bin" -out "$WORK/$label.oaep" \
    -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:"$md" -pkeyopt rsa_mgf1_md:"$md"
  remote --token-label "$tok" --login --pin "$PIN" --decrypt --id "$id" -m RSA-PKCS-OAEP --hash-algorithm "$hash" \
    --mgf "$mgf" -i "$WORK/$label.oaep" -o "$WORK/$label.oaep.out"
  cmp -s "$WORK/plain.bin" "$WORK/$label.oaep.out" || fail "OAEP decryption with $label gave other bytes"
  run openssl pkeyutl -encrypt -pubin -inkey "$WORK/$label.pem" -in "$WORK/plain.bin" -out "$WORK/$label.v15"
  remote --token-label "$tok" --login --pin "$PIN" --decrypt --id "$id" -m RSA-PKCS \
    -i "$WORK/$label.v15" -o "$WORK/$label.v15.out"
  cmp -s "$WORK/plain.bin" "$WORK/$label.v15.out" || fail "PKCS#1 v1.5 decryption with $label gave other bytes"
done

step "roles apply through the socket: a Key Vault Reader sees the key but may not sign"
remote --token-label dev --login --pin "$READER_PIN" -O --type privkey >"$WORK/reader.txt"
grep -q 'label: *sw-ec' "$WORK/reader.txt" || fail "the reader does not see sw-ec: $(cat "$WORK/reader.txt")"
out=$(remote_fails --token-label dev --login --pin "$READER_PIN" --sign --id 12 -m ECDSA \
  -i "$WORK/data.sha256" -o "$WORK/reader.sig" 2>&1) || true
grep -q CKR_KEY_FUNCTION_NOT_PERMITTED <<<"$out" || fail "the reader's signature gave: $out"

if ((PRIVSEP)); then
  CLIENT_AS=(as_uid "$CL_ID")
  C="$WORK/client"

  step "uid $CL_ID cannot read the deployment's files"
  for f in store.db store.db.masterkey hsm.pin softhsm2.conf audit.log vaultp11.yaml; do
    [[ $(stat -c '%u %a' "$WORK/$f") == "$SRV_ID 600" ]] || fail "$f is $(stat -c '%u %a' "$WORK/$f")"
    run_fails as_uid "$CL_ID" cat "$WORK/$f" >/dev/null
  done
  [[ $(stat -c '%u %a' "$WORK/tokens") == "$SRV_ID 700" ]] || fail "tokens is $(stat -c '%u %a' "$WORK/tokens")"
  run_fails as_uid "$CL_ID" ls "$WORK/tokens"

  step "uid $CL_ID cannot use the vaults in-process, even with the config"
  # (The config copy sits in a directory of the server's uid, which the module would refuse
  # first; VAULTP11_INSECURE_CONFIG_PERMISSIONS lets it go on to the store.)
  out=$(VAULTP11_CONF="$C/vaultp11.yaml" VAULTP11_INSECURE_CONFIG_PERMISSIONS=1 run_fails as_uid "$CL_ID" \
    pkcs11-tool --module "$VAULTP11_MODULE" --token-label dev --login --pin "$PIN" -O 2>&1) || true
  echo "$out"
  # The module does not initialise: the store it is given cannot be opened by this uid.
  grep -q 'C_Initialize failed' <<<"$out" || fail "the module initialised for uid $CL_ID"
  grep -q "error: C_Initialize: .*$WORK/store.db" <<<"$out" || fail "the failure does not name the store"
  grep -q 'sw-ec' <<<"$out" && fail "uid $CL_ID listed vault objects in-process"

  step "uid $CL_ID signs through the socket, HSM and software keys"
  cp "$WORK/data.bin" "$WORK/data.sha256" "$C/" && chown "$CL_ID:$CL_ID" "$C/data.bin" "$C/data.sha256"
  remote --token-label payments --login --pin "$PIN" --sign --id 01 -m SHA256-RSA-PKCS \
    -i "$C/data.bin" -o "$C/hsm-rsa.sig"
  run openssl dgst -sha256 -verify "$WORK/hsm-rsa.pem" -signature "$C/hsm-rsa.sig" "$WORK/data.bin"
  remote --token-label dev --login --pin "$PIN" --sign --id 12 -m ECDSA --signature-format openssl \
    -i "$C/data.sha256" -o "$C/sw-ec.sig"
  run openssl dgst -sha256 -verify "$WORK/sw-ec.pem" -signature "$C/sw-ec.sig" "$WORK/data.bin"
  out=$(remote_fails --token-label dev --login --pin "$READER_PIN" --sign --id 12 -m ECDSA \
    -i "$C/data.sha256" -o "$C/reader.sig" 2>&1) || true
  grep -q CKR_KEY_FUNCTION_NOT_PERMITTED <<<"$out" || fail "the reader's signature from uid $CL_ID gave: $out"

  step "uid $OUT_ID, not admitted to the socket's directory, reaches no vault"
  out=$(as_uid "$OUT_ID" pkcs11-tool --module "$CLIENT_MODULE" -L 2>&1) || true
  echo "$out"
  grep -q 'token label *: ' <<<"$out" && fail "uid $OUT_ID reached the vaults through the socket"

  step "a managed identity is the server's uid: the client's own is never seen"
  slots=$(remote -L)
  # dev: server-mi (uid $SRV_ID) has rights there, so every client sees a PIN-less login.
  awk '/token label *: dev$/{d=1} /^Slot/{if (d) exit} d' <<<"$slots" | grep -qi 'PIN pad\|protected' ||
    fail "dev does not offer the server uid's managed identity: $slots"
  # payments: client-mi (uid $CL_ID) has rights there, but the module never sees uid $CL_ID.
  awk '/token label *: payments$/{p=1} /^Slot/{if (p) exit} p' <<<"$slots" | grep -qi 'PIN pad\|protected' &&
    fail "payments offers a managed identity the server's uid does not have: $slots"
  remote --token-label dev --login -O --type pubkey >/dev/null
fi

step "stopping the server"
kill "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
[[ -e $SOCK ]] && fail "the server left its socket behind"

if ((PRIVSEP)); then
  step "the audit log: every call through the socket ran as uid $SRV_ID"
  log=$(run "$VAULTP11_CLI" audit tail "$WORK/audit.log" -n 100000)
  grep -q 'OK Authentication host=[^ ]* principal=server-mi vault=dev' <<<"$log" ||
    fail "the PIN-less login is not server-mi's: $(grep Authentication <<<"$log")"
  grep -q 'principal=client-mi' <<<"$log" && fail "client-mi logged in: the module saw the client's uid"
  uids=$(grep -o '"caller":{"pid":[0-9]*,"uid":[0-9]*' "$WORK/audit.log" | sed 's/.*"uid"://' | sort -u | tr '\n' ' ')
  # uid 0: the CLI's init; every module event is the server's.
  [[ $uids == "0 $SRV_ID " ]] || fail "callers in the audit log: $uids (expected 0 and $SRV_ID)"
  chown -R 0:0 "$WORK"  # back to root, who verifies the chain
fi

pass
