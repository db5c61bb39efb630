#!/usr/bin/env bash
# check-deb.sh: builds the Debian packages (with contrib/build-deb.sh) and checks them with
# lintian: the .deb and its gosyncd-dbgsym .ddeb. Fails on any error (E) or warning (W)
# tag; info (I) tags are printed and do not fail. It also checks the two packaging files
# that repeat what lives elsewhere: contrib/debian/changelog must name the package's
# version, and contrib/debian/copyright must hold LICENSE's text.
#
# The info tags left, and why they stay: hardening-no-fortify-functions (Rust code calls
# no fortified glibc functions; _FORTIFY_SOURCE is for C), package-supports-alternative-
# init-but-no-init.d-script (the service is systemd's alone: Type=notify, sandboxing),
# spelling-error-in-binary (byte sequences in compiled code that look like words). The
# package overrides one warning, initial-upload-closes-no-bugs (it is not uploaded to
# Debian: there is no ITP bug to close); see contrib/debian/lintian-overrides.
#
# Run it from anywhere in the repository:
#     contrib/check-deb.sh
# The packages are left in target/check-deb/. Extra arguments go to `cargo deb`.
# Needs cargo-deb (`cargo install cargo-deb --locked`) and lintian
# (`apt-get install lintian`). Not part of CI: the release build takes several minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v lintian >/dev/null; then
    echo "check-deb.sh: lintian is missing; install it with: apt-get install lintian" >&2
    exit 1
fi

out=target/check-deb
rm -rf "$out"
mkdir -p "$out"
contrib/build-deb.sh --output "$out" "$@"

shopt -s nullglob
debs=("$out"/*.deb)
ddebs=("$out"/*.ddeb)
if [ "${#debs[@]}" -ne 1 ] || [ "${#ddebs[@]}" -ne 1 ]; then
    echo "check-deb.sh: expected one .deb and one .ddeb in $out, found: ${debs[*]} ${ddebs[*]}" >&2
    exit 1
fi

failed=0

# The changelog's latest entry must be this version: lintian cannot tell.
version=$(dpkg-deb --field "${debs[0]}" Version)
changelog_version=$(sed -n '1s/^[^ ]* (\([^)]*\)).*/\1/p' contrib/debian/changelog)
if [ "$changelog_version" != "$version" ]; then
    echo "check-deb.sh: contrib/debian/changelog's latest entry is $changelog_version, the package is $version: add an entry" >&2
    failed=1
fi

# The copyright file's License paragraph is LICENSE without its title and copyright lines.
license_text=$(awk 'on { sub(/^ /, ""); sub(/^\.$/, ""); print } prev == "" && $0 == "License: MIT" { on = 1 } { prev = $0 }' contrib/debian/copyright)
if [ "$license_text" != "$(tail -n +5 LICENSE)" ]; then
    echo "check-deb.sh: the license text in contrib/debian/copyright differs from LICENSE" >&2
    failed=1
fi

echo "lintian ${debs[0]} ${ddebs[0]}"
if ! lintian --display-info --tag-display-limit 0 --fail-on error,warning "${debs[0]}" "${ddebs[0]}"; then
    echo "check-deb.sh: lintian reports errors or warnings (E: or W: above)" >&2
    failed=1
fi

if [ "$failed" -ne 0 ]; then
    exit 1
fi
echo "check-deb.sh: no lintian errors or warnings"
