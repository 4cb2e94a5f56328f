#!/usr/bin/env bash
# Typing indicators (issue 28): load B plain, and with a `typing` from the
# sender before 10 % of the messages (told to the room's 999 others, not
# stored), to compare server CPU per delivery in one sitting:
#   for m in plain typing; do MODE=$m bench/scenarios/typing.sh; done
source "$(dirname "$0")/lib.sh"
MODE=${MODE:-typing}
LOAD=(--clients 10000 --room-size 1000 --rate 200 --payload 64 --duration 15)
case "$MODE" in
    plain) bench_init typing-plain "load B, messages only (baseline)"
           bench_runs 3 1 2 -- "${LOAD[@]}" ;;
    typing) bench_init typing-typing "load B with a typing before 10 % of the messages"
           bench_runs 3 1 2 -- "${LOAD[@]}" --typing 0.1 ;;
    *) echo "MODE must be plain or typing" >&2; exit 1 ;;
esac
