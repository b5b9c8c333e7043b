#!/usr/bin/env bash
# Installs the packed tarball into a fresh strict TypeScript project (skipLibCheck off), type-checks
# test/consumer/main.ts and the README's library and service examples against it, and runs the
# program and the library example: the published declarations must stand on their own (no type from
# one of our devDependencies), the typed stubs' @ts-expect-error lines must be errors, and each
# program must exit by itself with status 0.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "consumer check: packing into $tmp"
npm pack --pack-destination "$tmp" --silent >/dev/null
tarball=$(ls "$tmp"/tunnel-rpc-*.tgz)

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
# README examples as a user would copy them: the first ```ts block under a heading.
readme_block() {
  awk -v heading="$1" '$0 == heading { section = 1; next } section && /^```ts$/ { inside = 1; next } inside && /^```$/ { exit } inside { print }' \
    "$root/README.md" >"$2"
  if [ ! -s "$2" ]; then
    echo "consumer check: found no \`\`\`ts block under '$1' in README.md" >&2
    exit 1
  fi
}
readme_block '## The library' readme.ts
readme_block '### Writing services' readme-services.ts

echo "consumer check: type-checking with $(npx tsc --version) (strict, skipLibCheck false)"
npx tsc --noEmit
npx tsc

# readme-services.ts only defines a service: compiling it is the check.
for program in main readme; do
  echo "consumer check: running $program.ts"
  timeout 60 node "out/$program.js"
done
echo "consumer check: ok"
