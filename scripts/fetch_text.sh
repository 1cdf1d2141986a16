#!/usr/bin/env bash
# Writes the English text flashlm calibrates and evaluates on, from Debian's r-cran-janeaustenr
# (installed by scripts/install_deps.sh). Calibration and evaluation never share a novel:
#   data/text/calibration.txt  Pride and Prejudice, Sense and Sensibility, Emma
#   data/text/eval.txt         Persuasion (held out)
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/text
mkdir -p "$out"
if [ -s "$out/eval.txt" ] && [ -s "$out/calibration.txt" ]; then
  echo "fetch_text: $out/eval.txt and $out/calibration.txt present"
  exit 0
fi
command -v Rscript >/dev/null || { echo "fetch_text: Rscript not found; run scripts/install_deps.sh" >&2; exit 1; }
Rscript --vanilla - "$out" <<'R'
args <- commandArgs(trailingOnly = TRUE)
suppressMessages(library(janeaustenr))
write_book <- function(books, path) {
  text <- unlist(lapply(books, function(b) get(b, envir = asNamespace("janeaustenr"))))
  writeLines(text, path, useBytes = TRUE)
}
write_book(c("prideprejudice", "sensesensibility", "emma"), file.path(args[1], "calibration.txt.tmp"))
write_book(c("persuasion"), file.path(args[1], "eval.txt.tmp"))
R
mv "$out/calibration.txt.tmp" "$out/calibration.txt"
mv "$out/eval.txt.tmp" "$out/eval.txt"
wc -c "$out/calibration.txt" "$out/eval.txt"
