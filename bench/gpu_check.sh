#!/usr/bin/env bash
# Alias of bench/gpu.sh (the one GPU command), kept for old instructions.
exec bash "$(dirname "$0")/gpu.sh" "$@"
