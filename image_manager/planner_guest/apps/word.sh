#!/bin/busybox sh
# The word processor: open (render the document's first page), type (80 characters, one at a time, into a
# file and onto the screen), save (write the document with fsync).
export PATH=/run/bin
planner=/opt/planner/bin/vdi-planner
document=/opt/planner/data/document.txt
case "$1" in
    ops) echo "open type save" ;;
    open) "$planner" text "$document" ;;
    type) mkdir -p /home/user/Documents
          "$planner" type /home/user/Documents/typed.txt \
              "Quarterly figures show steady growth in all regions; the details follow below." ;;
    save) mkdir -p /home/user/Documents
          dd if="$document" of=/home/user/Documents/report.txt conv=fsync 2>/dev/null ;;
    *) exit 2 ;;
esac
