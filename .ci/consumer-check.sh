#!/usr/bin/env bash
# Checks what the packed tarball holds, installs it into a fresh strict TypeScript project
# (skipLibCheck off), type-checks test/consumer/main.ts and the README's library and service
# examples against it, and runs the program and the library example: the published declarations
# must stand on their own (no type from one of our devDependencies), the typed stubs'
# @ts-expect-error lines must be errors, and each program must exit by itself with status 0.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "consumer check: packing into $tmp"
npm pack --pack-destination "$tmp" --silent >/dev/null
tarball=$(ls "$tmp"/tunnel-rpc-*.tgz)

# What the tarball ships: the library, its declarations, the commands, docs and the licence; no test
# helpers, benchmarks, or source maps pointing at sources it does not include.
files=$(tar -tzf "$tarball" | sed 's#^package/##')
for required in LICENSE README.md package.json cjs/index.cjs bin/tunnel-relay.js bin/tunnel-node.js bin/tunnel-call.js \
  dist/src/index.js dist/src/index.d.ts dist/src/cli/relay.js certs/make-certs.mjs docs/PROTOCOL.md; do
  if ! grep -qx "$required" <<<"$files"; then
    echo "consumer check: the tarball lacks $required" >&2
    exit 1
  fi
done
if unwanted=$(grep -E '^dist/(test|bench)/|\.map$|^dist/readme-' <<<"$files"); then
  echo "consumer check: the tarball ships files it should not:" >&2
  echo "$unwanted" >&2
  exit 1
fi
echo "consumer check: tarball holds $(wc -l <<<"$files") files, none from dist/test or dist/bench, no source maps"

# The same major versions as ours, read from our package.json.
dev() { node -p "require('$root/package.json').devDependencies['$1']"; }
typescript="typescript@$(dev typescript)"
types_node="@types/node@$(dev @types/node)"

mkdir "$tmp/consumer"
cd "$tmp/consumer"
npm init -y >/dev/null
npm pkg set type=module
npm install --no-audit --no-fund --silent "$tarball" "$typescript" "$types_node"

cat >tsconfig.json <<'EOF'
{
  "compilerOptions": {
    "target": "es2022",
    "module": "nodenext",
    "moduleResolution": "nodenext",
    "types": ["node"],
    "strict": true,
    "skipLibCheck": false,
    "rootDir": ".",
    "outDir": "out"
  },
  "include": ["main.ts", "readme.ts", "readme-services.ts"]
}
EOF
cp "$root/test/consumer/main.ts" main.ts
# The docs' examples as a user would copy them: the fenced block after a `<!-- test: NAME -->` marker
# in README.md or a guide in docs/ (test/readme.test.ts runs the same blocks from the checkout).
readme_block() {
  awk -v marker="<!-- test: $1 -->" '$0 == marker { found = 1; next } found && /^```/ && !inside { inside = 1; next } inside && /^```$/ { exit } inside { print }' \
    "$root/README.md" "$root"/docs/*.md >"$2"
  if [ ! -s "$2" ]; then
    echo "consumer check: found no block marked '<!-- test: $1 -->' in README.md or docs/*.md" >&2
    exit 1
  fi
}
readme_block library readme.ts
readme_block service-definition readme-services.ts

echo "consumer check: type-checking with $(npx tsc --version) (strict, skipLibCheck false)"
npx tsc --noEmit
npx tsc

# A CommonJS program requires the installed package through its `require` entry (cjs/index.cjs).
echo "consumer check: require('tunnel-rpc') from CommonJS"
node --input-type=commonjs -e "const t = require('tunnel-rpc'); if (typeof t.connect !== 'function') { console.error('require gave', Object.keys(t)); process.exit(1); }"

# readme-services.ts only defines a service: compiling it is the check.
for program in main readme; do
  echo "consumer check: running $program.ts"
  timeout 60 node "out/$program.js"
done
echo "consumer check: ok"
