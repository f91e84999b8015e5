#!/bin/sh
set -eu
case "$1" in
    server)
        shift
        # Small volumes: a test stack stores a few recordings.
        exec /usr/bin/weed -logtostderr=true server -volume.max=8 \
            -master.volumeSizeLimitMB=64 "$@"
        ;;
    *) exec /usr/bin/weed "$@" ;;
esac
