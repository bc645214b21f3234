#!/bin/busybox sh
# The web browser: browse (render four pages one after the other).
export PATH=/run/bin
case "$1" in
    ops) echo "browse" ;;
    browse) /opt/planner/bin/vdi-planner pages 4 /opt/planner/data/page.txt ;;
    *) exit 2 ;;
esac
