#!/usr/bin/env bash
# A key created by one process (pkcs11-tool) is found by another, long-running process that
# had the module loaded, a session open and was logged in before the key existed.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool
make_deployment

step "start process B (find_later): initialise, open a session, log in"
start_find_later

step "B: label later-key does not exist yet"
n=$(ask later-key)
[[ $n == 0 ]] || fail "B found $n objects labelled later-key before it was created"

step "process A (pkcs11-tool) creates an EC key pair labelled later-key"
p11_user --keypairgen --key-type EC:prime256v1 --label later-key --id 42

step "B finds the new pair without a restart"
n=$(ask later-key)
[[ $n == 2 ]] || fail "B found $n objects labelled later-key after A created the pair (expected 2)"

step "A creates a data object; B finds it"
printf 'late' >"$WORK/late.txt"
p11_user --write-object "$WORK/late.txt" --type data --label later-data
n=$(ask later-data)
[[ $n == 1 ]] || fail "B found $n objects labelled later-data (expected 1)"

step "A deletes the key pair; B no longer finds it"
p11_user --delete-object --type privkey --id 42
p11_user --delete-object --type pubkey --id 42
n=$(ask later-key)
[[ $n == 0 ]] || fail "B still finds $n objects labelled later-key after A deleted them"

step "B finalises cleanly"
exec 3>&-
wait "${BG_PIDS[0]}" || fail "process B exited with an error"
BG_PIDS=()
exec 4<&-

pass
