#!/usr/bin/env bash
# Downloads a package's source distribution from PyPI once, unpacks it under
# target/pysdist/ and prints the unpacked directory.
#
#   bash tests/python/fetch_sdist.sh PACKAGE VERSION
#
# Reruns find the unpacked tree (marked complete by a .unpacked file) and do not
# download again; an flock makes concurrent callers wait for the first one.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
package="$1"
version="$2"
cache="$root/target/pysdist"
dir="$cache/$package-$version"
mkdir -p "$cache"
exec 9>"$cache/$package-$version.lock"
flock -w 600 9 || { echo "fetch_sdist: could not lock within 600 s" >&2; exit 1; }
if [[ -f "$dir/.unpacked" ]]; then
    echo "$dir"
    exit 0
fi
python="$(bash "$here/ensure_venv.sh")"
download="$cache/download-$package-$version"
rm -rf "$download" "$dir"
mkdir -p "$download"
echo "fetch_sdist: downloading the $package $version sdist from PyPI" >&2
# pip prepares the sdist's metadata in an isolated build environment (setuptools
# and wheel from PyPI); that does not compile anything.
"$python" -m pip download --quiet --disable-pip-version-check --timeout 60 \
    --no-binary :all: --no-deps -d "$download" "$package==$version" >&2
archive="$(ls "$download"/*.tar.gz)"
tar -xzf "$archive" -C "$cache"
[[ -d "$dir" ]] || { echo "fetch_sdist: $archive did not unpack to $dir" >&2; exit 1; }
touch "$dir/.unpacked"
echo "$dir"
