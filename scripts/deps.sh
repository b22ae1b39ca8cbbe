# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/demo.sh: installs Debian packages that are missing.
#
#   ensure_packages PKG...
#
# Installs only the packages dpkg does not report as installed; runs `apt-get update` at most
# once per run, and only when something has to be installed. Needs root (or sudo).

_VAULTP11_APT_UPDATED=${_VAULTP11_APT_UPDATED:-}

ensure_packages() {
  local missing=() p status
  for p in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0

  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || {
      echo "deps: missing packages (${missing[*]}) and not root; install them first" >&2
      return 1
    }
    sudo=(sudo)
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if [[ -z $_VAULTP11_APT_UPDATED ]]; then
    "${sudo[@]}" apt-get update -q
    _VAULTP11_APT_UPDATED=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
}

# ensure_backports_package PKG: installs PKG from Debian bookworm-backports (adding that suite to
# /etc/apt/sources.list.d/ first) when it is not installed; pkcs11-provider, driven by
# tests/consumer/openssl_provider.sh, is packaged there only. Returns non-zero when it cannot
# be had (the test then skips).
ensure_backports_package() {
  local p=$1 status sudo=()
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] && return 0
  ((EUID == 0)) || sudo=(sudo)
  local list=/etc/apt/sources.list.d/bookworm-backports.list
  if ! grep -rqs '^deb .* bookworm-backports ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" | "${sudo[@]}" tee "$list" >/dev/null || return 1
    _VAULTP11_APT_UPDATED=
  fi
  if [[ -z $_VAULTP11_APT_UPDATED ]]; then
    "${sudo[@]}" apt-get update -q || return 1
    _VAULTP11_APT_UPDATED=1
  fi
  echo "deps: installing $p from bookworm-backports"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -t bookworm-backports "$p" </dev/null
}

# shellcheck disable=SC2034  # used by the scripts that source this file
# The packages needed to build vaultp11 and run every test suite.
VAULTP11_BUILD_PACKAGES=(
  meson ninja-build pkg-config g++ ccache
  libssl-dev libp11-kit-dev p11-kit libyaml-cpp-dev libsqlite3-dev libpq-dev
  libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libfmt-dev libcli11-dev
)
# shellcheck disable=SC2034
# PKCS#11 consumers driven by the consumer tests and the demo.
VAULTP11_CONSUMER_PACKAGES=(
  opensc libengine-pkcs11-openssl softhsm2 openssl sqlite3 gnutls-bin openjdk-17-jdk-headless
  p11-kit p11-kit-modules
  postgresql  # the PostgreSQL store's tests start their own servers (initdb, pg_ctl, pg_basebackup)
)
