#!/usr/bin/env bash
# The real-photo set of reports/transfer_photos: six variety folders of Fruits-360 "3-body problem"
# (Mihai Oltean, CC BY-SA 4.0, https://github.com/fruits-360/fruits-360-3-body-problem), arranged
# as published (Training/<class>/<variety>/*.jpg, Test/<class>/<variety>/*.jpg), into
# .data/photos/fruits360-3body/. Needs git and the network; about 21 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.data/photos/fruits360-3body
commit=f0f029370699ac3317e66d09878cf537af67a3ae
folders=("Training/Apple/Apple Golden 2" "Test/Apple/Apple Golden 1" "Training/Cherry/Cherry Wax Red 2"
         "Test/Cherry/Cherry Wax Red 3" "Training/Tomato/Tomato Maroon 2" "Test/Tomato/Tomato Maroon 1")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git clone --quiet --filter=blob:none --no-checkout https://github.com/fruits-360/fruits-360-3-body-problem "$tmp/repo"
git -C "$tmp/repo" archive "$commit" LICENSE README.md "${folders[@]}" | { mkdir -p "$dest"; tar -x -C "$dest"; }
echo "$(find "$dest" -name '*.jpg' | wc -l) images in $dest (licence: $dest/LICENSE)"
