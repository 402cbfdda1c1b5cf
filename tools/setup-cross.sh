#!/usr/bin/env bash
# tools/setup-cross.sh - install a private Rust cross toolchain for
# aarch64-unknown-linux-gnu and armv7-unknown-linux-gnueabihf on Debian 12 (x86_64),
# without rustup targets, Docker or `cross`.
#
# Why this way: rustup on the build machines has only the x86_64 target and cannot fetch
# others, and `cross` needs a container engine that can pull images. Debian ships a recent Rust
# as `rustc-web` (bookworm-security) with per-architecture standard libraries
# `libstd-rust-web-<X.Y>` and `libstd-rust-web-dev` for amd64, arm64 and armhf; bookworm main only
# has 1.85, too old for alloy 2.x (needs >= 1.94). The compiler and the target std must be the
# same exact Debian version. The packages are unpacked into a private directory instead of a
# multiarch apt install, so apt's foreign-architecture indexes never come into play.
#
# What it does (default):
#   * apt-installs the GNU cross linkers/C compilers, cross libc, qemu-user-static and the host
#     runtime libraries of rustc-web and libLLVM (a fixed list here plus the lock's `depends`);
#   * reads tools/rust-cross.lock, which pins each .deb by pool path, SHA-256 and size:
#     `rustc-web` (amd64), `libstd-rust-web-<X.Y>` and `libstd-rust-web-dev` (amd64, arm64,
#     armhf) and `libllvm<N>` (amd64; the compiler links libLLVM.so.<N>);
#   * downloads exactly those files from the archive's pool, checks size and SHA-256 against the
#     lock (no archive index is read on this path), unpacks them with `dpkg-deb -x` into a
#     private sysroot and writes a `rustc` wrapper to be used as cargo's RUSTC (see
#     tools/cross-build.sh); then checks that both targets cross-link and run under qemu.
#   The lock is the trust anchor, like Cargo.lock: it is written by --update-lock from the
#   archive's signed index and reviewed and committed like any other change.
#
# Layout: ${ZEPPELIN_CACHE:-$HOME/.cache/zeppelin}/rust-cross/<debian-version>/{sysroot,bin/rustc}
#         ${ZEPPELIN_CACHE:-$HOME/.cache/zeppelin}/rust-cross/current -> <debian-version>
# A `.complete` marker makes re-runs instant and offline (only the lock file is read).
#
# Usage: tools/setup-cross.sh [--refresh | --update-lock]
#   --refresh      ignore the marker: download, verify and install the locked version again.
#   --update-lock  rewrite the lock from the archive's current signed index: InRelease (gpgv,
#                  Debian archive keyring, Valid-Until) -> main/binary-<arch>/Packages.xz
#                  (SHA-256 listed in InRelease) -> each .deb's pool path, SHA-256 and size.
#                  Takes the newest rustc-web (upstream >= 1.94) and requires the same exact
#                  version for every architecture. Installs nothing; review and commit the lock,
#                  then run this script without arguments. Needed when the security archive
#                  drops a pinned file after a newer upload (the default path then stops with
#                  "HTTP 404").
# Environment:
#   ZEPPELIN_CACHE                    cache root (default $HOME/.cache/zeppelin)
#   ZEPPELIN_CROSS_LOCK               lock file (default: rust-cross.lock next to this script)
#   ZEPPELIN_CROSS_MIRROR             archive URI (default: from the apt sources that carry the
#                                     suite, fallback http://deb.debian.org/debian-security). Any
#                                     mirror or snapshot works for the default path: the lock
#                                     pins the content.
#   ZEPPELIN_CROSS_SUITE              suite for --update-lock (default bookworm-security)
#   ZEPPELIN_CROSS_ALLOW_STALE_INDEX  --update-lock only. =1: if the mirror serves a Packages.xz
#                                     that the current InRelease does not list (a half-synced
#                                     mirror), accept it when another validly signed InRelease
#                                     of the same Codename (the Suite alias, e.g.
#                                     oldstable-security) lists it, even if that one is past
#                                     Valid-Until; also accept an expired main InRelease. The
#                                     exact-version rule still applies, and the lock records
#                                     which index vouched for each architecture. Off by default.
set -euo pipefail

TOOLS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOCK="${ZEPPELIN_CROSS_LOCK:-$TOOLS_DIR/rust-cross.lock}"
SUITE="${ZEPPELIN_CROSS_SUITE:-bookworm-security}"
COMPONENT=main
MIN_UPSTREAM=1.94
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
DEB_ARCHES=(amd64 arm64 armhf)
TRIPLES=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
CACHE_ROOT="${ZEPPELIN_CACHE:-$HOME/.cache/zeppelin}/rust-cross"
CURRENT="$CACHE_ROOT/current"
APT_TOOLS=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
  qemu-user-static file xz-utils curl ca-certificates dpkg)
APT_INDEX_TOOLS=(curl ca-certificates gpgv debian-archive-keyring xz-utils)
# Host runtime dependencies of rustc-web 1.96 and libllvm22 (their Depends in bookworm-security):
# rustc-web -> libc6 libgcc-s1 gcc libc-dev binutils; libstd-rust-web -> libstdc++6;
# libllvm22 -> libedit2 libffi8 libxml2 libz3-4 libzstd1 zlib1g. The lock's `depends` line
# (written by --update-lock from the index) adds whatever a newer version needs.
APT_HOSTDEPS=(libc6 libgcc-s1 libstdc++6 gcc libc6-dev binutils
  libedit2 libffi8 libxml2 libz3-4 libzstd1 zlib1g)
CROSS_COMMANDS=(aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc qemu-aarch64-static qemu-arm-static file)

MODE=install
REFRESH=0
for arg in "$@"; do
  case "$arg" in
    --refresh) REFRESH=1 ;;
    --update-lock) MODE=update-lock ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup-cross: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done
[[ $MODE == install || $REFRESH == 0 ]] || { echo "setup-cross: --refresh and --update-lock do not mix" >&2; exit 2; }

log() { printf 'setup-cross: %s\n' "$*" >&2; }
die() { printf 'setup-cross: ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# The lock file. Lines (blank lines and lines starting with # are ignored):
#   version <Debian version of rustc-web and of every libstd-rust-web-* package>
#   depends <host package> ...                    (optional, may repeat)
#   <arch> <package> <pool path> <sha256> <size>
LOCK_VERSION=""
LOCK_DEPENDS=()
LOCK_ARCH=() LOCK_PKG=() LOCK_PATH=() LOCK_SHA=() LOCK_SIZE=()
read_lock() {
  local lineno=0 line a b c d e extra seen="" i majmin llvm=0 want
  [[ -r $LOCK ]] || die "no lock file at $LOCK (run tools/setup-cross.sh --update-lock to create it)"
  while IFS= read -r line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    line=${line%%#*}
    read -r a b c d e extra <<<"$line" || true
    [[ -z ${a:-} ]] && continue
    case "$a" in
      version)
        [[ -n ${b:-} && -z ${c:-} && $b =~ ^[0-9][0-9A-Za-z.:+~-]*$ ]] || die "$LOCK:$lineno: bad version line"
        [[ -z $LOCK_VERSION ]] || die "$LOCK:$lineno: second version line"
        LOCK_VERSION=$b ;;
      depends)
        read -r -a extra <<<"${line#*depends}"
        for b in "${extra[@]}"; do
          [[ $b =~ ^[a-z0-9][a-z0-9.+-]+$ ]] || die "$LOCK:$lineno: bad package name '$b'"
          LOCK_DEPENDS+=("$b")
        done ;;
      *)
        [[ " ${DEB_ARCHES[*]} " == *" $a "* ]] || die "$LOCK:$lineno: unknown keyword or architecture '$a'"
        [[ -n ${e:-} && -z ${extra:-} ]] || die "$LOCK:$lineno: expected '<arch> <package> <pool path> <sha256> <size>'"
        [[ $b =~ ^[a-z0-9][a-z0-9.+-]+$ ]] || die "$LOCK:$lineno: bad package name '$b'"
        [[ $c =~ ^pool/[A-Za-z0-9._+~/-]+\.deb$ && $c != *..* ]] || die "$LOCK:$lineno: bad pool path '$c'"
        [[ $d =~ ^[0-9a-f]{64}$ ]] || die "$LOCK:$lineno: bad sha256 '$d'"
        [[ $e =~ ^[1-9][0-9]*$ ]] || die "$LOCK:$lineno: bad size '$e'"
        [[ " $seen " != *" $a/$b "* ]] || die "$LOCK:$lineno: $b ($a) listed twice"
        seen+=" $a/$b"
        LOCK_ARCH+=("$a") LOCK_PKG+=("$b") LOCK_PATH+=("$c") LOCK_SHA+=("$d") LOCK_SIZE+=("$e") ;;
    esac
  done <"$LOCK"
  [[ -n $LOCK_VERSION ]] || die "$LOCK: no version line"
  UPSTREAM=${LOCK_VERSION#*:}; UPSTREAM=${UPSTREAM%%[+~-]*}   # 1.96.0
  majmin=$(cut -d. -f1,2 <<<"$UPSTREAM")                      # 1.96
  # Exactly the packages the toolchain needs, with the locked version in their file names.
  want="amd64/rustc-web"
  for a in "${DEB_ARCHES[@]}"; do want+=" $a/libstd-rust-web-$majmin $a/libstd-rust-web-dev"; done
  for b in $want; do [[ " $seen " == *" $b "* ]] || die "$LOCK: ${b#*/} (${b%%/*}) is missing"; done
  for i in "${!LOCK_PKG[@]}"; do
    a=${LOCK_ARCH[$i]} b=${LOCK_PKG[$i]} c=${LOCK_PATH[$i]}
    if [[ $a == amd64 && $b =~ ^libllvm[0-9]+$ ]]; then
      llvm=$((llvm + 1))
    elif [[ " $want " == *" $a/$b "* ]]; then
      [[ ${c##*/} == "${b}_${LOCK_VERSION#*:}_$a.deb" ]] ||
        die "$LOCK: $c is not version $LOCK_VERSION of $b ($a)"
    else
      die "$LOCK: unexpected package $b ($a)"
    fi
  done
  [[ $llvm == 1 ]] || die "$LOCK: needs exactly one libllvm<N> (amd64) line"
}

# ---------------------------------------------------------------------------------------------
# Fast path: done before, nothing to do, no network, no root needed.
toolchain_ok() { # $1 = install dir
  local dir=$1 t c
  [[ -f "$dir/.complete" && -x "$dir/bin/rustc" ]] || return 1
  for c in "${CROSS_COMMANDS[@]}"; do command -v "$c" >/dev/null 2>&1 || return 1; done
  for t in "${TRIPLES[@]}"; do
    compgen -G "$dir/sysroot/usr/lib/rustlib/$t/lib/libstd-*.rlib" >/dev/null || return 1
  done
  "$dir/bin/rustc" -vV >/dev/null 2>&1
}
point_current() { # make rust-cross/current name the locked version
  [[ $(readlink "$CURRENT" 2>/dev/null) == "$LOCK_VERSION" ]] && return 0
  { ln -sfn "$LOCK_VERSION" "$CACHE_ROOT/.current.$$" && mv -T "$CACHE_ROOT/.current.$$" "$CURRENT"; } ||
    die "cannot update $CURRENT"
}

if [[ $MODE == install ]]; then
  read_lock
  DEST="$CACHE_ROOT/$LOCK_VERSION"
  if [[ $REFRESH == 0 ]] && toolchain_ok "$DEST" && [[ $(head -n1 "$DEST/.complete") == "$LOCK_VERSION" ]]; then
    point_current
    log "toolchain ready: $DEST (locked $LOCK_VERSION)"
    log "RUSTC=$CURRENT/bin/rustc"
    exit 0
  fi
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/setup-cross.XXXXXX")
PARTIAL=""
cleanup() { rm -rf "$WORK"; if [[ -n $PARTIAL ]]; then rm -rf "$PARTIAL"; fi; }
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# apt helpers
export DEBIAN_FRONTEND=noninteractive
INSTALLED_PROVIDES=""
pkg_installed() { # a real package installed, or a virtual package provided by an installed one
  local st
  st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null || true)
  [[ $st == ii* ]] && return 0
  if [[ -z $INSTALLED_PROVIDES ]]; then
    INSTALLED_PROVIDES=$(dpkg-query -W -f='${db:Status-Abbrev} ${Provides}\n' 2>/dev/null |
      awk '$1 == "ii" { $1 = ""; print }' | tr ',' '\n' | sed 's/(.*)//; s/^ *//; s/ *$//' | sort -u)
  fi
  grep -qxF "$1" <<<"$INSTALLED_PROVIDES"
}
APT_UPDATED=0
apt_ensure() { # install the packages that are missing; apt-get update only if something is
  local missing=() p
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  [[ ${#missing[@]} == 0 ]] && return 0
  if [[ $(id -u) != 0 ]]; then
    echo "setup-cross: must run as root to apt-install: ${missing[*]}. Run:" >&2
    printf '  sudo env ZEPPELIN_CACHE=%q %q %s\n' "${ZEPPELIN_CACHE:-$HOME/.cache/zeppelin}" \
      "$(readlink -f "$0")" "$([[ $MODE == update-lock ]] && echo --update-lock)" >&2
    exit 1
  fi
  log "apt-get install ${missing[*]}"
  if [[ $APT_UPDATED == 0 ]]; then
    apt-get update -qq >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; die "apt-get update failed"; }
    APT_UPDATED=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$WORK/apt.log" 2>&1 ||
    { tail -n 40 "$WORK/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
  INSTALLED_PROVIDES=""
}

# ---------------------------------------------------------------------------------------------
# Archive location: the apt source that carries $SUITE, else the public default.
mirror_from_apt() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    # deb822 stanzas: print the first URI of the stanza whose Suites contain $SUITE
    awk -v suite="$SUITE" 'BEGIN { RS = ""; FS = "\n" }
      { uri = ""; ok = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/)   { split($i, a, /[ \t]+/); uri = a[2] }
          if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
        }
        if (ok && uri != "") { print uri; exit } }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    awk -v suite="$SUITE" '$1 == "deb" { u = ""; for (i = 2; i <= NF; i++) { if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; continue }
        if (u == "") { u = $i; continue } if ($i == suite) { print u; exit } break } }' "$f"
  done
}
MIRROR="${ZEPPELIN_CROSS_MIRROR:-$(mirror_from_apt | head -n1)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian-security}"
MIRROR="${MIRROR%/}"
DISTS="$MIRROR/dists/$SUITE"

fetch() { # url dest
  curl -fsSL --retry 3 --retry-delay 2 --connect-timeout 20 -o "$2" "$1" || die "download failed: $1"
}
sha256_of() { sha256sum "$1" | awk '{print $1}'; }

# =============================================================================================
# --update-lock: signed index -> lock file
if [[ $MODE == update-lock ]]; then
  apt_ensure "${APT_INDEX_TOOLS[@]}"
  log "archive: $MIRROR ($SUITE/$COMPONENT)"

  # Verify an InRelease with the Debian archive keyring; write only the signed text to $2.
  verify_inrelease() { # file out label
    local status
    if ! status=$(gpgv --keyring "$KEYRING" --output "$2" "$1" 2>&1); then
      printf '%s\n' "$status" >&2
      die "$3: BAD or missing OpenPGP signature (checked with $KEYRING). Not using this archive."
    fi
    grep -q '^Codename: '"${SUITE}"'$\|^Suite: '"${SUITE}"'$' "$2" ||
      die "$3: signed file is not for $SUITE (Suite/Codename mismatch)"
  }
  field() { sed -n "s/^$1: //p" "$2" | head -n1; } # field name, file (signed Release text)
  valid_until_ok() { # release-text -> 0 if not expired
    local vu
    vu=$(field Valid-Until "$1")
    [[ -z $vu ]] && return 0
    (( $(date -d "$vu" +%s) >= $(date +%s) ))
  }
  release_sha256() { # release-text path -> "sha256 size"
    awk -v p="$2" '/^SHA256:/ { s = 1; next } /^[^ ]/ { s = 0 } s && $3 == p { print $1, $2; exit }' "$1"
  }

  log "verifying $DISTS/InRelease"
  fetch "$DISTS/InRelease" "$WORK/InRelease"
  verify_inrelease "$WORK/InRelease" "$WORK/Release" "$SUITE/InRelease"
  log "InRelease: good signature, Date: $(field Date "$WORK/Release")"
  MAIN_NOTE=""
  if ! valid_until_ok "$WORK/Release"; then
    [[ ${ZEPPELIN_CROSS_ALLOW_STALE_INDEX:-0} == 1 ]] ||
      die "$SUITE/InRelease expired (Valid-Until: $(field Valid-Until "$WORK/Release")): the mirror is stale or the clock is wrong. Not writing the lock."
    log "WARNING: $SUITE/InRelease is past Valid-Until; continuing (ZEPPELIN_CROSS_ALLOW_STALE_INDEX=1)"
    MAIN_NOTE=", EXPIRED, accepted with ZEPPELIN_CROSS_ALLOW_STALE_INDEX=1"
  fi

  # Fetch and verify main/binary-<arch>/Packages.xz against the signed Release; print the
  # decompressed Packages file path. Writes a provenance line to $WORK/prov-<arch>.
  get_packages() { # arch
    local arch=$1 rel="$COMPONENT/binary-$1/Packages.xz" want size got alias alt="" f prov
    prov="$SUITE/InRelease (Date: $(field Date "$WORK/Release"), Valid-Until: $(field Valid-Until "$WORK/Release")$MAIN_NOTE)"
    read -r want size < <(release_sha256 "$WORK/Release" "$rel") || true
    [[ -n ${want:-} ]] || die "$rel is not listed in the signed $SUITE/InRelease"
    f="$WORK/Packages-$arch.xz"
    fetch "$DISTS/$rel" "$f"
    got=$(sha256_of "$f")
    if [[ $got != "$want" ]] && grep -q '^Acquire-By-Hash: yes' "$WORK/Release"; then
      log "$rel: sha256 $got does not match the signed InRelease ($want); trying by-hash"
      if curl -fsSL --retry 2 -o "$f.byhash" "$DISTS/$COMPONENT/binary-$arch/by-hash/SHA256/$want" 2>/dev/null; then
        mv "$f.byhash" "$f"; got=$(sha256_of "$f")
      fi
    fi
    if [[ $got != "$want" ]]; then
      alias=$(field Suite "$WORK/Release")
      if [[ ${ZEPPELIN_CROSS_ALLOW_STALE_INDEX:-0} == 1 && -n $alias && $alias != "$SUITE" ]]; then
        # A half-synced mirror: the file may be listed by the alias suite's (older) InRelease.
        fetch "$MIRROR/dists/$alias/InRelease" "$WORK/InRelease-$alias"
        verify_inrelease "$WORK/InRelease-$alias" "$WORK/Release-$alias" "$alias/InRelease"
        [[ $(field Codename "$WORK/Release-$alias") == "$(field Codename "$WORK/Release")" ]] ||
          die "$alias/InRelease has a different Codename"
        read -r alt _ < <(release_sha256 "$WORK/Release-$alias" "$rel") || true
        if [[ -n $alt && $got == "$alt" ]]; then
          want=$alt
          prov="$alias/InRelease (Date: $(field Date "$WORK/Release-$alias"), Valid-Until: $(field Valid-Until "$WORK/Release-$alias")"
          valid_until_ok "$WORK/Release-$alias" || prov+=", EXPIRED"
          prov+=$'),\n  an older signed index of the same Codename: the mirror served a Packages.xz that the\n'
          prov+="  current $SUITE/InRelease does not list; accepted with ZEPPELIN_CROSS_ALLOW_STALE_INDEX=1"
          log "WARNING: $rel verified against the OLDER signed $alias/InRelease" \
            "(Date: $(field Date "$WORK/Release-$alias"), Valid-Until: $(field Valid-Until "$WORK/Release-$alias"))" \
            "because the mirror is half-synced (ZEPPELIN_CROSS_ALLOW_STALE_INDEX=1)"
        fi
      fi
    fi
    if [[ $got != "$want" ]]; then
      die "$(printf '%s\n' \
        "$DISTS/$rel: sha256 mismatch." \
        "  signed InRelease says: $want" \
        "  downloaded file is:    $got" \
        "The mirror serves an index that the signed InRelease does not vouch for (usually a mirror" \
        "caught mid-sync, or tampering). The lock was not changed. Retry later, set" \
        "ZEPPELIN_CROSS_MIRROR to another mirror, or, knowingly, ZEPPELIN_CROSS_ALLOW_STALE_INDEX=1" \
        "to accept an index that an older, validly signed InRelease of the same suite lists.")"
    fi
    printf '%s: %s %s\n  listed by %s\n' "$arch" "$rel" "$got" "$prov" >"$WORK/prov-$arch"
    xz -dc "$f" >"$WORK/Packages-$arch" || die "$rel: cannot decompress"
    echo "$WORK/Packages-$arch"
  }

  # Print one stanza field of a package from a Packages file: pkgfield Packages name Field
  pkgfield() {
    awk -v pkg="$2" -v fld="$3" 'BEGIN { RS = ""; FS = "\n" }
      { name = ""; val = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ "^Package: ") name = substr($i, 10)
          if (index($i, fld ": ") == 1) val = substr($i, length(fld) + 3)
        }
        if (name == pkg) { print val; exit } }' "$1"
  }
  # Package names of a Depends line (first alternative of each group, no version constraints)
  dep_names() { tr ',' '\n' <<<"$1" | sed 's/|.*//; s/(.*)//; s/:any//; s/^ *//; s/ *$//' | sed '/^$/d'; }

  declare -A PKGS
  for arch in "${DEB_ARCHES[@]}"; do
    PKGS[$arch]=$(get_packages "$arch")
    log "Packages.xz ($arch): sha256 verified"
  done

  # Version policy: whatever rustc-web version the archive has now; everything else must match it.
  VERSION=$(pkgfield "${PKGS[amd64]}" rustc-web Version)
  [[ -n $VERSION ]] || die "rustc-web not found in $SUITE/$COMPONENT (amd64)"
  UPSTREAM=${VERSION#*:}; UPSTREAM=${UPSTREAM%%[+~-]*}          # 1.96.0
  MAJMIN=$(cut -d. -f1,2 <<<"$UPSTREAM")                        # 1.96
  if ! printf '%s\n%s\n' "$MIN_UPSTREAM" "$UPSTREAM" | sort -V -C; then
    die "$SUITE has rustc-web $VERSION; need upstream >= $MIN_UPSTREAM (alloy 2.x)"
  fi
  STDPKG="libstd-rust-web-$MAJMIN"
  log "picked rustc-web $VERSION (Rust $UPSTREAM) from $SUITE"

  for arch in "${DEB_ARCHES[@]}"; do
    for p in "$STDPKG" libstd-rust-web-dev; do
      v=$(pkgfield "${PKGS[$arch]}" "$p" Version)
      [[ $v == "$VERSION" ]] ||
        die "$p ($arch) is '${v:-missing}' in $SUITE but rustc-web (amd64) is $VERSION; compiler and target std must be the same exact version (archive mid-update?). The lock was not changed."
    done
  done
  LLVMPKG=$(dep_names "$(pkgfield "${PKGS[amd64]}" "$STDPKG" Depends)" | grep -E '^libllvm[0-9]+$' | head -n1 || true)
  [[ -n $LLVMPKG ]] || die "cannot find the libllvm<N> dependency of $STDPKG"
  # libllvm<N> normally comes from the security archive too; bookworm main is not indexed here.
  [[ -n $(pkgfield "${PKGS[amd64]}" "$LLVMPKG" Filename) ]] || die "$LLVMPKG not found in $SUITE (amd64)"
  log "compiler links $LLVMPKG $(pkgfield "${PKGS[amd64]}" "$LLVMPKG" Version)"

  # Host runtime dependencies of what gets unpacked (libLLVM's libz3/libedit/libxml2..., gcc, libc-dev)
  HOSTDEPS=()
  for p in rustc-web "$STDPKG" "$LLVMPKG"; do
    while read -r d; do
      case "$d" in libstd-rust-web-*|libllvm[0-9]*|rustc-web) continue ;; esac
      [[ " ${HOSTDEPS[*]} " == *" $d "* ]] || HOSTDEPS+=("$d")
    done < <(dep_names "$(pkgfield "${PKGS[amd64]}" "$p" Depends)")
  done

  # The lock body, one line per .deb; each pool file must exist on the mirror with that size.
  BODY="$WORK/lock-body"
  {
    echo "version $VERSION"
    echo "depends ${HOSTDEPS[*]}"
  } >"$BODY"
  lock_line() { # arch package
    local P=${PKGS[$1]} fn sha size code len
    fn=$(pkgfield "$P" "$2" Filename); sha=$(pkgfield "$P" "$2" SHA256); size=$(pkgfield "$P" "$2" Size)
    [[ $fn =~ ^pool/ && $sha =~ ^[0-9a-f]{64}$ && $size =~ ^[0-9]+$ ]] ||
      die "$2 ($1): no usable Filename/SHA256/Size in Packages"
    read -r code len < <(curl -sSIL --retry 3 --connect-timeout 20 -o /dev/null \
      -w '%{http_code} %header{content-length}\n' "$MIRROR/$fn" || true)
    [[ $code == 200 ]] || die "$MIRROR/$fn: HTTP ${code:-error} (index lists a file the mirror does not serve)"
    [[ -z $len || $len == "$size" ]] || die "$MIRROR/$fn: server says $len bytes, index says $size"
    printf '%s %s %s %s %s\n' "$1" "$2" "$fn" "$sha" "$size" >>"$BODY"
  }
  lock_line amd64 rustc-web
  for arch in "${DEB_ARCHES[@]}"; do
    lock_line "$arch" "$STDPKG"
    lock_line "$arch" libstd-rust-web-dev
  done
  lock_line amd64 "$LLVMPKG"

  if [[ -r $LOCK ]] && cmp -s "$BODY" <(sed '/^[[:space:]]*#/d; /^[[:space:]]*$/d' "$LOCK"); then
    log "lock unchanged: $LOCK already pins rustc-web $VERSION with these files"
    exit 0
  fi
  OLD_VERSION=$(sed -n 's/^version //p' "$LOCK" 2>/dev/null || true)
  {
    echo "# tools/rust-cross.lock - the Debian packages of the private Rust cross toolchain, pinned"
    echo "# by pool path, SHA-256 and size (the same trust model as Cargo.lock). tools/setup-cross.sh"
    echo "# downloads exactly these files from the mirror and refuses anything else; it reads no"
    echo "# archive index."
    echo "#"
    echo "# Generated $(date -u +%Y-%m-%dT%H:%M:%SZ) by \`tools/setup-cross.sh --update-lock\`"
    echo "# from $MIRROR, suite $SUITE, component $COMPONENT:"
    echo "# signed InRelease (gpgv, Debian archive keyring) -> $COMPONENT/binary-<arch>/Packages.xz"
    echo "# (SHA-256 listed in that InRelease) -> Filename, SHA256 and Size of each .deb."
    sed 's/^/#   /' "$WORK/prov-amd64" "$WORK/prov-arm64" "$WORK/prov-armhf"
    echo "#"
    echo "# Refresh (e.g. when setup-cross.sh reports HTTP 404 for a pinned file: the security archive"
    echo "# keeps only the newest upload): run \`tools/setup-cross.sh --update-lock\`, review the"
    echo "# diff, run \`tools/setup-cross.sh\`, commit this file."
    echo "#"
    echo "# Format: 'version <Debian version>', 'depends <host packages>',"
    echo "#         then '<arch> <package> <pool path> <sha256> <size>' per .deb."
    cat "$BODY"
  } >"$LOCK.tmp.$$"
  mv -f "$LOCK.tmp.$$" "$LOCK"
  if [[ -n $OLD_VERSION && $OLD_VERSION != "$VERSION" ]]; then
    log "lock moves rustc-web $OLD_VERSION -> $VERSION"
  fi
  log "wrote $LOCK (rustc-web $VERSION). Review it, run tools/setup-cross.sh, and commit the lock."
  exit 0
fi

# =============================================================================================
# Default: install the locked packages.
apt_ensure "${APT_TOOLS[@]}" "${APT_HOSTDEPS[@]}" "${LOCK_DEPENDS[@]}"
log "archive: $MIRROR (pinned by $LOCK: rustc-web $LOCK_VERSION)"

# Download one pinned pool file; a 404 means the archive no longer has it.
fetch_pinned() { # index-in-lock dest
  local i=$1 out=$2 url="$MIRROR/${LOCK_PATH[$1]}" code rc=0 got name=${LOCK_PATH[$1]##*/}
  log "download $name ($((LOCK_SIZE[i] / 1024 / 1024)) MiB)"
  code=$(curl -sSL --retry 3 --retry-delay 2 --connect-timeout 20 -o "$out" -w '%{http_code}' "$url") || rc=$?
  if [[ $code == 404 || $code == 410 ]]; then
    die "$(printf '%s\n' \
      "$url: HTTP $code - the mirror no longer has this pinned file." \
      "The security archive keeps only the newest upload of a package, so a newer ${LOCK_PKG[$i]}" \
      "has most likely replaced $LOCK_VERSION. Update the lock from the signed index and commit it:" \
      "  sudo tools/setup-cross.sh --update-lock && git diff tools/rust-cross.lock" \
      "  sudo tools/setup-cross.sh && git add tools/rust-cross.lock && git commit" \
      "(To keep this exact version instead, point ZEPPELIN_CROSS_MIRROR at a snapshot that still has" \
      "it, e.g. https://snapshot.debian.org/archive/debian-security/<YYYYMMDDTHHMMSSZ>.)" \
      "Nothing was installed.")"
  fi
  [[ $rc == 0 && ( $code == 200 || $url == file://* ) ]] ||
    die "download failed: $url (HTTP ${code:-none}, curl exit $rc). Nothing was installed."
  got=$(stat -c %s "$out")
  [[ $got == "${LOCK_SIZE[i]}" ]] ||
    die "$name: size mismatch (lock says ${LOCK_SIZE[i]} bytes, got $got). Corrupt or tampered download; nothing was installed."
  got=$(sha256_of "$out")
  [[ $got == "${LOCK_SHA[i]}" ]] ||
    die "$name: sha256 mismatch (lock says ${LOCK_SHA[i]}, got $got). Corrupt or tampered download; nothing was installed."
  # The control fields must agree with the lock line too (a cheap second look).
  got=$(dpkg-deb -f "$out" Package Architecture | sed 's/^[^:]*: //' | tr '\n' ' ')
  [[ $got == "${LOCK_PKG[i]} ${LOCK_ARCH[i]} " ]] || die "$name: control fields say '$got', lock says ${LOCK_PKG[i]} ${LOCK_ARCH[i]}"
}

mkdir -p "$CACHE_ROOT"
PARTIAL="$CACHE_ROOT/.$LOCK_VERSION.partial.$$"
mkdir -p "$PARTIAL/sysroot" "$PARTIAL/bin" "$WORK/debs"
# Download and verify everything first, then unpack: a bad file leaves no half-made sysroot.
for i in "${!LOCK_PATH[@]}"; do fetch_pinned "$i" "$WORK/debs/${LOCK_PATH[$i]##*/}"; done
log "all ${#LOCK_PATH[@]} files match the lock (size and sha256)"
for i in "${!LOCK_PATH[@]}"; do
  dpkg-deb -x "$WORK/debs/${LOCK_PATH[$i]##*/}" "$PARTIAL/sysroot" || die "dpkg-deb -x failed for ${LOCK_PATH[$i]##*/}"
done
rm -rf "$PARTIAL/sysroot/usr/share/doc" "$PARTIAL/sysroot/usr/share/man"

cat >"$PARTIAL/bin/rustc" <<'EOF'
#!/bin/sh
# rustc wrapper written by tools/setup-cross.sh: Debian rustc-web from a private sysroot.
# Use as cargo's RUSTC. The sysroot sits next to this file's directory.
here=$(dirname "$(readlink -f "$0")")
SYSROOT=$(dirname "$here")/sysroot
LD_LIBRARY_PATH="$SYSROOT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "$SYSROOT/usr/bin/rustc" --sysroot "$SYSROOT/usr" "$@"
EOF
chmod 0755 "$PARTIAL/bin/rustc"

# ---------------------------------------------------------------------------------------------
# Checks (in the temporary directory, before it becomes the install): the wrapper runs and
# reports the locked version, target std libs exist, and a hello-world cross-links and runs
# under qemu for both targets.
VV=$("$PARTIAL/bin/rustc" -vV) || die "rustc -vV failed (missing libLLVM runtime library?)"
grep -q "^release: $UPSTREAM" <<<"$VV" || die "wrapper reports $(grep ^release <<<"$VV"), expected $UPSTREAM"
printf '%s\n' "$VV" | sed 's/^/  /' >&2
printf 'fn main() { println!("hello from {}", std::env::consts::ARCH); }\n' >"$WORK/hello.rs"
for t in "${TRIPLES[@]}"; do
  compgen -G "$PARTIAL/sysroot/usr/lib/rustlib/$t/lib/libstd-*.rlib" >/dev/null ||
    die "no std rlib for $t in sysroot/usr/lib/rustlib/$t/lib"
  case $t in
    aarch64-*) gcc=aarch64-linux-gnu-gcc qemu=qemu-aarch64-static lib=/usr/aarch64-linux-gnu ;;
    armv7-*)   gcc=arm-linux-gnueabihf-gcc qemu=qemu-arm-static lib=/usr/arm-linux-gnueabihf ;;
  esac
  "$PARTIAL/bin/rustc" --target "$t" -C linker="$gcc" -o "$WORK/hello-$t" "$WORK/hello.rs" ||
    die "cannot build hello world for $t"
  out=$("$qemu" -L "$lib" "$WORK/hello-$t") || die "hello world for $t does not run under $qemu"
  log "$t: std present, hello world ok ($out)"
done

{ printf '%s\n' "$LOCK_VERSION"; grep -v '^[[:space:]]*#' "$LOCK" | sed '/^[[:space:]]*$/d'; } >"$PARTIAL/.complete"
chmod -R a+rX "$PARTIAL"
rm -rf "$DEST"
mv -T "$PARTIAL" "$DEST"
PARTIAL=""
point_current
log "done: rustc-web $LOCK_VERSION in $DEST"
log "RUSTC=$CURRENT/bin/rustc"
