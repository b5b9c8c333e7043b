#!/usr/bin/env bash
# Installs the packed tarball into a fresh strict TypeScript project (skipLibCheck off), type-checks
# test/consumer/main.ts and the README's library example against it, then runs both: the published
# declarations must stand on their own (no type from one of our devDependencies), the typed stubs'
# @ts-expect-error lines must be errors, and each program must exit by itself with status 0.
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
  "include": ["main.ts", "readme.ts"]
}
EOF
cp "$root/test/consumer/main.ts" main.ts
# The first ```ts block of the README's "The library" section, as a user would copy it.
awk '/^## The library/ { section = 1 } section && /^```ts$/ { inside = 1; next } inside && /^```$/ { exit } inside { print }' \
  "$root/README.md" >readme.ts
if [ ! -s readme.ts ]; then
  echo "consumer check: found no \`\`\`ts block under '## The library' in README.md" >&2
  exit 1
fi

echo "consumer check: type-checking with $(npx tsc --version) (strict, skipLibCheck false)"
npx tsc --noEmit
npx tsc

for program in main readme; do
  echo "consumer check: running $program.ts"
  timeout 60 node "out/$program.js"
done
echo "consumer check: ok"
