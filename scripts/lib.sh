# Shared by scripts/*.sh: make sure the tools the build and tests need are present.
# Installs missing Debian packages when run as root; never touches anything else.

need() { # need COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing $2 (for $1)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null; }
  fi
  command -v "$1" >/dev/null 2>&1 || { echo "missing $1 (Debian package $2)" >&2; exit 1; }
}

need_cargo() {
  command -v cargo >/dev/null 2>&1 && return 0
  [[ -x $HOME/.cargo/bin/cargo ]] && { export PATH=$HOME/.cargo/bin:$PATH; return 0; }
  echo "cargo not found: install Rust first (https://rustup.rs)" >&2
  exit 1
}

need_file() { # need_file PATH DEBIAN-PACKAGE: a package that provides no command
  [[ -e $1 ]] && return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing $2 (for $1)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null; }
  fi
  [[ -e $1 ]] || { echo "missing $1 (Debian package $2)" >&2; exit 1; }
}
