#!/usr/bin/env bash
# JWT logins with real tools: a client-certificate principal logs in to pkcs11-tool with an
# assertion printed by `vaultp11 assertion` (certificate and key made by the openssl CLI), and
# an OAuth2 principal with a bearer token that an "identity provider" made of openssl commands
# signed (RS256, its key published in a JWKS file). `vaultp11 whoami` shows the challenge and
# who each credential is; a replayed assertion and a token for another audience are refused.
source "$(dirname "$0")/lib.sh"
need pkcs11-tool
need basenc

step "a certificate and key for the client, an RSA key and JWKS for the identity provider"
run openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=svc \
  -keyout "$WORK/svc.key" -out "$WORK/svc.crt"
run openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/idp.key"
b64url() { basenc --base64url -w0 | tr -d '='; }
p11_fails() { run_fails pkcs11-tool --module "$VAULTP11_MODULE" "$@"; }
modulus=$(openssl rsa -in "$WORK/idp.key" -noout -modulus | sed 's/^Modulus=//' | basenc --base16 -d | b64url)
printf '{"keys":[{"kty":"RSA","kid":"idp-1","n":"%s","e":"AQAB"}]}' "$modulus" >"$WORK/jwks.json"
chmod 0644 "$WORK/jwks.json" "$WORK/svc.crt"

EXTRA_PRINCIPALS_YAML="  - { name: svc, auth: client_certificate, certificate_file: $WORK/svc.crt }
  - { name: ci, auth: oauth2, issuer: \"https://idp.example\", audience: vaultp11-demo, jwks_file: $WORK/jwks.json }"
EXTRA_ROLES_YAML="  - { principal: svc, role: Key Vault Crypto Officer, scope: /vaults/payments }
  - { principal: ci, role: Key Vault Reader, scope: /vaults/payments }"
make_deployment

step "whoami without a credential: the resource id and who may issue credentials"
run "$VAULTP11_CLI" whoami --vault payments >"$WORK/whoami.txt"
grep -q '^resource: vaultp11://[0-9a-f]\{32\}/vaults/payments$' "$WORK/whoami.txt" || fail "no resource id: $(cat "$WORK/whoami.txt")"
grep -q 'authority="https://idp.example", resource="vaultp11-demo"' "$WORK/whoami.txt" || fail "no challenge: $(cat "$WORK/whoami.txt")"

step "a client assertion logs pkcs11-tool in (and works once)"
assertion=$("$VAULTP11_CLI" assertion --principal svc --key "$WORK/svc.key" --cert "$WORK/svc.crt" --vault payments) ||
  fail "vaultp11 assertion failed"
[[ $assertion == *.*.* ]] || fail "not a JWT: $assertion"
p11 --login --pin "$assertion" --keypairgen --key-type EC:prime256v1 --label by-assertion --id 11
p11_fails --login --pin "$assertion" -O
assertion=$("$VAULTP11_CLI" assertion --principal svc --key "$WORK/svc.key" --cert "$WORK/svc.crt" --slot 0)
printf '%s\n' "$assertion" | run "$VAULTP11_CLI" whoami --vault payments --pin - >"$WORK/who-svc.txt"
grep -q '^principal: svc (client_certificate)$' "$WORK/who-svc.txt" || fail "whoami: $(cat "$WORK/who-svc.txt")"
grep -q '^keys: .*sign' "$WORK/who-svc.txt" || fail "whoami permissions: $(cat "$WORK/who-svc.txt")"

step "a bearer token from the identity provider logs pkcs11-tool in"
bearer() {
  local aud=$1 now header payload sig
  now=$(date +%s)
  header=$(printf '{"alg":"RS256","typ":"JWT","kid":"idp-1"}' | b64url)
  payload=$(printf '{"iss":"https://idp.example","sub":"ci","aud":"%s","iat":%d,"exp":%d}' "$aud" "$now" $((now + 300)) | b64url)
  sig=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$WORK/idp.key" -binary | b64url)
  printf '%s.%s.%s' "$header" "$payload" "$sig"
}
token=$(bearer vaultp11-demo)
p11 --login --pin "$token" -O >"$WORK/objects.txt"
grep -q by-assertion "$WORK/objects.txt" || fail "the reader does not see the key: $(cat "$WORK/objects.txt")"
p11_fails --login --pin "$token" --keypairgen --key-type EC:prime256v1 --label reader-key
p11_fails --login --pin "$(bearer someone-else)" -O
printf '%s\n' "$token" | run "$VAULTP11_CLI" whoami --pin - >"$WORK/who-ci.txt"
grep -q '^principal: ci (oauth2)$' "$WORK/who-ci.txt" || fail "whoami: $(cat "$WORK/who-ci.txt")"

step "no credential reaches the log"
grep -rqF "$token" "$WORK" --exclude=objects.txt --exclude='*.key' 2>/dev/null && fail "the token was written somewhere"
pass
