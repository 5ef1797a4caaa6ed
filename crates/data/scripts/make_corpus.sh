#!/bin/sh
# Rebuilds corpus/refinedweb-sample.parquet from the Debian packages named in
# corpus/README.md (Debian bookworm). Needs apt-get, dpkg-deb, zcat and cargo.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get download dict-jargon=4.4.7-3.1 dict-devil=1.0-13.1 \
    fortunes=1:1.99.1-7.3 fortunes-min=1:1.99.1-7.3
for deb in *.deb; do
    pkg=${deb%%_*}
    mkdir -p "root/$pkg"
    dpkg-deb -x "$deb" "root/$pkg"
done
for dz in root/*/usr/share/dictd/*.dict.dz; do
    zcat "$dz" > "${dz%.dz}"
    touch -r "$dz" "${dz%.dz}"
done
cd "$here"
cargo run --example make_corpus -p pretrain-data -- \
    "$work/root" "$here/corpus/refinedweb-sample.parquet"
