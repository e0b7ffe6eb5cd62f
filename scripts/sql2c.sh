#!/bin/sh
# sql2c.sh NAME FILE: prints FILE as a C string constant named NAME.
set -eu
name=$1
file=$2
printf '/* generated from %s by scripts/sql2c.sh; do not edit */\n' "$file"
printf 'static const char %s[] =\n' "$name"
sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/    "/' -e 's/$/\\n"/' "$file"
printf '    ;\n'
