#!/usr/bin/env bash
# Writes bench/results/README.md: one line per recorded run (its folder and
# the title of its report), newest first. Run it after recording a result;
# the test suite checks that every folder here is listed.
set -euo pipefail
cd "$(dirname "$0")"
{
    echo "# Recorded runs"
    echo
    echo "Every benchmark run recorded here, newest first: each folder holds its"
    echo "command, the machine, the date and the figures (see ../README.md for the"
    echo "scenarios and the figures of record). Written by \`index.sh\`."
    echo
    echo "| run | what |"
    echo "|---|---|"
    for d in $(ls -d */ | tr -d / | sort -r); do
        md=$(ls "$d"/*.md 2>/dev/null | head -1 || true)
        title=""
        [ -n "$md" ] && title=$(grep -m1 '^# ' "$md" | sed 's/^# //; s/|/\\|/g')
        link=${md:-$d}
        echo "| [$d]($link) | ${title:-(no report)} |"
    done
} > README.md
