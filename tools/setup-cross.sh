#!/usr/bin/env bash
# tools/setup-cross.sh - install a private Rust cross toolchain for
# aarch64-unknown-linux-gnu and armv7-unknown-linux-gnueabihf on Debian 12 (x86_64),
# without rustup targets, Docker or `cross`.
#
# What it does (see /work/shared/ENVIRONMENT.md, "Cross-compiling for aarch64 and armv7"):
#   * apt-installs the GNU cross linkers/C compilers, cross libc, qemu-user-static and the
#     runtime libraries of Debian's libLLVM;
#   * takes Debian's `rustc-web` (bookworm-security) for amd64 plus the matching
#     `libstd-rust-web-<X.Y>` / `libstd-rust-web-dev` for amd64, arm64 and armhf and
#     `libllvm<N>` (amd64), verified InRelease (gpgv) -> Packages.xz (sha256) -> .deb (sha256);
#   * unpacks them with `dpkg-deb -x` into a private sysroot (no multiarch apt install) and
#     writes a `rustc` wrapper to be used as cargo's RUSTC (see tools/cross-build.sh).
#
# Layout: ${ZEPPELIN_CACHE:-$HOME/.cache/zeppelin}/rust-cross/<debian-version>/{sysroot,bin/rustc}
#         ${ZEPPELIN_CACHE:-$HOME/.cache/zeppelin}/rust-cross/current -> <debian-version>
# A `.complete` marker makes re-runs instant and offline.
#
# Usage: tools/setup-cross.sh [--refresh]
#   --refresh   ignore the marker: look at the archive again and install a newer version if
#               the archive moved on (the security archive keeps only its newest version).
# Environment:
#   ZEPPELIN_CACHE                    cache root (default $HOME/.cache/zeppelin)
#   ZEPPELIN_CROSS_MIRROR             archive URI (default: from /etc/apt/sources.list.d/debian.sources,
#                                     fallback http://deb.debian.org/debian-security)
#   ZEPPELIN_CROSS_SUITE              suite (default bookworm-security)
#   ZEPPELIN_CROSS_ALLOW_STALE_INDEX  =1: if the mirror serves a Packages.xz that the current
#                                     InRelease does not list (a half-synced mirror), accept it
#                                     when another validly signed InRelease of the same Codename
#                                     (the Suite alias, e.g. oldstable-security) lists it, even if
#                                     that one is past Valid-Until. The exact-version rule below
#                                     still applies. Off by default.
set -euo pipefail

SUITE="${ZEPPELIN_CROSS_SUITE:-bookworm-security}"
COMPONENT=main
MIN_UPSTREAM=1.94
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
DEB_ARCHES=(amd64 arm64 armhf)
TRIPLES=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
CACHE_ROOT="${ZEPPELIN_CACHE:-$HOME/.cache/zeppelin}/rust-cross"
CURRENT="$CACHE_ROOT/current"
APT_TOOLS=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
  qemu-user-static file xz-utils curl gpgv debian-archive-keyring ca-certificates gcc libc6-dev)
# Runtime libraries of libLLVM; the exact list is also read from the archive's Depends later.
APT_LLVM_RUNTIME=(libz3-4 libedit2 libxml2 libffi8 libzstd1 zlib1g libstdc++6 libgcc-s1)
CROSS_COMMANDS=(aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc qemu-aarch64-static qemu-arm-static file)

REFRESH=0
for arg in "$@"; do
  case "$arg" in
    --refresh) REFRESH=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup-cross: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

log() { printf 'setup-cross: %s\n' "$*" >&2; }
die() { printf 'setup-cross: ERROR: %s\n' "$*" >&2; exit 1; }

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

if [[ $REFRESH == 0 ]] && toolchain_ok "$CURRENT"; then
  log "toolchain ready: $(readlink -f "$CURRENT") ($(cat "$CURRENT/.complete"))"
  log "RUSTC=$CURRENT/bin/rustc"
  exit 0
fi

if [[ $(id -u) != 0 ]]; then
  echo "setup-cross: must run as root (it apt-installs cross compilers and qemu). Run:" >&2
  printf '  sudo env ZEPPELIN_CACHE=%q %q\n' "${ZEPPELIN_CACHE:-$HOME/.cache/zeppelin}" "$(readlink -f "$0")" >&2
  exit 1
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
  log "apt-get install ${missing[*]}"
  if [[ $APT_UPDATED == 0 ]]; then
    apt-get update -qq >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; die "apt-get update failed"; }
    APT_UPDATED=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$WORK/apt.log" 2>&1 ||
    { tail -n 40 "$WORK/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
  INSTALLED_PROVIDES=""
}

apt_ensure "${APT_TOOLS[@]}" "${APT_LLVM_RUNTIME[@]}"

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
log "archive: $MIRROR ($SUITE/$COMPONENT)"

fetch() { # url dest
  curl -fsSL --retry 3 --retry-delay 2 --connect-timeout 20 -o "$2" "$1" || die "download failed: $1"
}
sha256_of() { sha256sum "$1" | awk '{print $1}'; }

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
if ! valid_until_ok "$WORK/Release"; then
  [[ ${ZEPPELIN_CROSS_ALLOW_STALE_INDEX:-0} == 1 ]] ||
    die "$SUITE/InRelease expired (Valid-Until: $(field Valid-Until "$WORK/Release")): the mirror is stale or the clock is wrong."
  log "WARNING: $SUITE/InRelease is past Valid-Until; continuing (ZEPPELIN_CROSS_ALLOW_STALE_INDEX=1)"
fi

# Fetch and verify main/binary-<arch>/Packages.xz against the signed Release; print the
# decompressed Packages file path.
get_packages() { # arch
  local arch=$1 rel="$COMPONENT/binary-$1/Packages.xz" want size got alias alt="" f
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
      "caught mid-sync, or tampering). Nothing was installed. Retry later, set ZEPPELIN_CROSS_MIRROR" \
      "to another mirror, or, knowingly, ZEPPELIN_CROSS_ALLOW_STALE_INDEX=1 to accept an index that an" \
      "older, still validly signed InRelease of the same suite lists.")"
  fi
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

# ---------------------------------------------------------------------------------------------
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
      die "$p ($arch) is '${v:-missing}' in $SUITE but rustc-web (amd64) is $VERSION; compiler and target std must be the same exact version (archive mid-update?)"
  done
done
LLVMPKG=$(dep_names "$(pkgfield "${PKGS[amd64]}" "$STDPKG" Depends)" | grep -E '^libllvm[0-9]+$' | head -n1 || true)
[[ -n $LLVMPKG ]] || die "cannot find the libllvm<N> dependency of $STDPKG"
# libllvm<N> normally comes from the security archive too; bookworm main is not indexed here.
[[ -n $(pkgfield "${PKGS[amd64]}" "$LLVMPKG" Filename) ]] || die "$LLVMPKG not found in $SUITE (amd64)"
log "compiler links $LLVMPKG $(pkgfield "${PKGS[amd64]}" "$LLVMPKG" Version)"

# Host runtime dependencies of what we unpack (libLLVM's libz3/libedit/libxml2..., gcc, libc-dev)
HOSTDEPS=()
for p in rustc-web "$STDPKG" "$LLVMPKG"; do
  while read -r d; do
    case "$d" in libstd-rust-web-*|libllvm[0-9]*|rustc-web) continue ;; esac
    HOSTDEPS+=("$d")
  done < <(dep_names "$(pkgfield "${PKGS[amd64]}" "$p" Depends)")
done
apt_ensure "${HOSTDEPS[@]}"

# ---------------------------------------------------------------------------------------------
DEST="$CACHE_ROOT/$VERSION"
mkdir -p "$CACHE_ROOT"
if toolchain_ok "$DEST"; then
  log "$VERSION already installed in $DEST"
else
  rm -rf "$DEST"
  PARTIAL="$CACHE_ROOT/.$VERSION.partial.$$"
  mkdir -p "$PARTIAL/sysroot" "$PARTIAL/bin" "$WORK/debs"
  fetch_deb() { # arch package
    local P=${PKGS[$1]} fn sha size out got
    fn=$(pkgfield "$P" "$2" Filename); sha=$(pkgfield "$P" "$2" SHA256); size=$(pkgfield "$P" "$2" Size)
    [[ -n $fn && -n $sha ]] || die "$2 ($1): no Filename/SHA256 in Packages"
    out="$WORK/debs/${fn##*/}"
    log "download ${fn##*/} ($((size / 1024 / 1024)) MiB)"
    fetch "$MIRROR/$fn" "$out"
    got=$(sha256_of "$out")
    [[ $got == "$sha" ]] || die "${fn##*/}: sha256 mismatch (Packages says $sha, got $got). Not installing."
    dpkg-deb -x "$out" "$PARTIAL/sysroot" || die "dpkg-deb -x failed for ${fn##*/}"
  }
  fetch_deb amd64 rustc-web
  fetch_deb amd64 "$LLVMPKG"
  for arch in "${DEB_ARCHES[@]}"; do
    fetch_deb "$arch" "$STDPKG"
    fetch_deb "$arch" libstd-rust-web-dev
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
  chmod -R a+rX "$PARTIAL"
  mv -T "$PARTIAL" "$DEST"
  PARTIAL=""
fi

# ---------------------------------------------------------------------------------------------
# Checks: the wrapper runs, reports the version we picked, target std libs exist, and a
# hello-world cross-links and runs under qemu for both targets.
VV=$("$DEST/bin/rustc" -vV) || die "$DEST/bin/rustc -vV failed (missing libLLVM runtime library?)"
grep -q "^release: $UPSTREAM" <<<"$VV" || die "wrapper reports $(grep ^release <<<"$VV"), expected $UPSTREAM"
printf '%s\n' "$VV" | sed 's/^/  /' >&2
printf 'fn main() { println!("hello from {}", std::env::consts::ARCH); }\n' >"$WORK/hello.rs"
for t in "${TRIPLES[@]}"; do
  compgen -G "$DEST/sysroot/usr/lib/rustlib/$t/lib/libstd-*.rlib" >/dev/null ||
    die "no std rlib for $t in $DEST/sysroot/usr/lib/rustlib/$t/lib"
  case $t in
    aarch64-*) gcc=aarch64-linux-gnu-gcc qemu=qemu-aarch64-static lib=/usr/aarch64-linux-gnu ;;
    armv7-*)   gcc=arm-linux-gnueabihf-gcc qemu=qemu-arm-static lib=/usr/arm-linux-gnueabihf ;;
  esac
  "$DEST/bin/rustc" --target "$t" -C linker="$gcc" -o "$WORK/hello-$t" "$WORK/hello.rs" ||
    die "cannot build hello world for $t"
  out=$("$qemu" -L "$lib" "$WORK/hello-$t") || die "hello world for $t does not run under $qemu"
  log "$t: std present, hello world ok ($out)"
done

printf '%s\n' "$VERSION" >"$DEST/.complete"
ln -sfn "$VERSION" "$CACHE_ROOT/.current.$$"
mv -T "$CACHE_ROOT/.current.$$" "$CURRENT"
log "done: rustc-web $VERSION in $DEST"
log "RUSTC=$CURRENT/bin/rustc"
