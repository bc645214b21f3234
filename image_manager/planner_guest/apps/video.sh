#!/bin/busybox sh
# The video player: play (48 frames of 320x240 at up to 24 frames per second).
export PATH=/run/bin
case "$1" in
    ops) echo "play" ;;
    play) /opt/planner/bin/vdi-planner frames 48 24 ;;
    *) exit 2 ;;
esac
