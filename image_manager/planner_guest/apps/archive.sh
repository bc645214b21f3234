#!/bin/busybox sh
# The archiver: compress (gzip -6 of a 1 MiB file).
export PATH=/run/bin
case "$1" in
    ops) echo "compress" ;;
    compress) gzip -6 -c /opt/planner/data/archive.bin > /var/tmp/planner-archive.gz && rm -f /var/tmp/planner-archive.gz ;;
    *) exit 2 ;;
esac
