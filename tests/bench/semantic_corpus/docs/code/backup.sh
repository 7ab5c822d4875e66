#!/bin/sh
# Nightly copy of /home to the external disk, keeping the last 14 days.
# Each night gets its own dated folder; unchanged files are hard links to the previous
# night's copy (rsync --link-dest), so a new folder costs only what changed.
set -eu

DEST=/mnt/backup
TODAY=$(date +%Y-%m-%d)
LATEST=$DEST/latest

mountpoint -q "$DEST" || { echo "backup disk not mounted" >&2; exit 1; }

rsync -a --delete --link-dest="$LATEST" /home/ "$DEST/$TODAY/"
ln -sfn "$DEST/$TODAY" "$LATEST"

# drop folders older than two weeks
find "$DEST" -maxdepth 1 -type d -name '20??-??-??' -mtime +14 -exec rm -rf {} +
