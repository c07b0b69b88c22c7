#!/usr/bin/env bash
# The mobile bindings from Kotlin (and the Swift sources), end to end:
#
# 1. builds crvs-mobile (libcrvs_mobile.so), uniffi-bindgen and crvs-server;
# 2. generates the Swift sources and checks that they are there (there is
#    no Swift compiler on these machines);
# 3. generates the Kotlin bindings and compiles them with Flow.kt (kotlinc,
#    against JNA and kotlinx-coroutines);
# 4. starts a real crvs-server on 127.0.0.1, creates an enrolment token, and
#    runs Flow.kt on the JVM against the built library;
# 5. checks that the KIdC the program received is the one the server issued.
#
# Needs: a JDK, python3, and
#   KOTLINC   the kotlinc of JetBrains' compiler (default: the npm package
#             `kotlin-compiler` installed by .ci/run under .ci/.tools)
#   JNA_JAR   JNA's jar (default: Debian's libjna-java, /usr/share/java/jna.jar)
# Any failure exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

kotlinc=${KOTLINC:-$root/.ci/.tools/node_modules/kotlin-compiler/bin/kotlinc}
jna=${JNA_JAR:-/usr/share/java/jna.jar}
[ -x "$kotlinc" ] || { echo "kotlinc not found at $kotlinc (set KOTLINC)" >&2; exit 1; }
[ -f "$jna" ] || { echo "JNA not found at $jna (apt-get install libjna-java, or set JNA_JAR)" >&2; exit 1; }
klib=$(cd "$(dirname "$kotlinc")/../lib" && pwd)
coroutines=$klib/kotlinx-coroutines-core-jvm.jar
stdlib=$klib/kotlin-stdlib.jar
[ -f "$coroutines" ] || { echo "$coroutines is missing" >&2; exit 1; }

echo "== build crvs-mobile, uniffi-bindgen, crvs-server"
cargo build --quiet -p crvs-mobile -p crvs-uniffi-bindgen -p crvs-server
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug
library=$target/libcrvs_mobile.so

work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

bindgen() { "$target/uniffi-bindgen" generate --no-format --library "$library" --language "$1" --out-dir "$2" >/dev/null; }

echo "== generate the Swift sources"
bindgen swift "$work/swift"
for f in CrvsMobile.swift CrvsMobileFFI.h CrvsMobileFFI.modulemap; do
    [ -s "$work/swift/$f" ] || { echo "uniffi-bindgen did not produce $f" >&2; exit 1; }
done
grep -q 'public static func create(storeDir: String, passphrase: String, commune: String)' "$work/swift/CrvsMobile.swift"
grep -q 'public protocol SyncProgress' "$work/swift/CrvsMobile.swift"
grep -q '^enum CrvsError: Swift.Error' "$work/swift/CrvsMobile.swift"
grep -q 'open func changePassphrase(old: String, new: String)' "$work/swift/CrvsMobile.swift"
grep -q 'case WeakPassphrase(' "$work/swift/CrvsMobile.swift"
grep -q 'case Staff(' "$work/swift/CrvsMobile.swift"
grep -q 'open func verify(id: String, by: String, pin: String?)' "$work/swift/CrvsMobile.swift"
echo "ok: $(ls "$work/swift" | tr '\n' ' ')"

echo "== generate the Kotlin bindings and compile Flow.kt"
bindgen kotlin "$work/kotlin"
kt=$work/kotlin/kh/gov/crvs/crvs_mobile.kt
[ -s "$kt" ] || { echo "uniffi-bindgen did not produce $kt" >&2; exit 1; }
start=$(date +%s)
"$kotlinc" -nowarn -cp "$jna:$coroutines" -d "$work/flow.jar" "$kt" mobile-bindings/kotlin/Flow.kt
echo "compiled in $(( $(date +%s) - start )) s"

echo "== start crvs-server"
"$target/crvs-server" serve --json --data "$work/server" --listen 127.0.0.1:0 >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
addr=
for _ in $(seq 200); do
    addr=$(head -n 1 "$work/server.out" 2>/dev/null | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["listening"])' 2>/dev/null) && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.err" >&2; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { echo "crvs-server did not report its address" >&2; cat "$work/server.err" >&2; exit 1; }
# The office's roster, before enrolment: the tablet receives it with its
# enrolment, and every acting call then takes the PIN.
pins="clerk-01=204816,clerk-02=731950,registrar-01=582013"
for entry in "clerk-01:clerk,verifier:204816" "clerk-02:clerk,verifier:731950" "registrar-01:registrar:582013"; do
    IFS=: read -r id roles pin <<<"$entry"
    CRVS_PIN="$pin" "$target/crvs-server" staff add --data "$work/server" --commune 171003 --id "$id" --role "$roles" --json >/dev/null
done
token=$("$target/crvs-server" enroll-token --data "$work/server" --commune 171003 --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
echo "listening on $addr"

echo "== run Flow.kt on the JVM"
mkdir -p "$work/tablet"
CRVS_SERVER_URL="http://$addr" CRVS_TOKEN="$token" CRVS_STAFF_PINS="$pins" CRVS_WORK_DIR="$work/tablet" CRVS_FIXTURES="$root/fixtures" \
    java -Djna.library.path="$target" -cp "$work/flow.jar:$stdlib:$jna:$coroutines" kh.gov.crvs.flow.FlowKt \
    | tee "$work/flow.out"

echo "== the server issued that KIdC for that record"
python3 - "$work/flow.out" "$work/server/server.db" <<'EOF'
import json, sqlite3, sys
got = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
db = sqlite3.connect(f"file:{sys.argv[2]}?mode=ro", uri=True)
rows = db.execute("SELECT kidc, record_id FROM kidc_issuance").fetchall()
plain = lambda s: s.replace("-", "").lower()
assert len(rows) == 1, rows
assert rows[0][0] == got["kidc"], (rows, got)
assert plain(rows[0][1]) == plain(got["record_id"]), (rows, got)
print(f"ok: KIdC {got['kidc']} issued for {got['record_id']}")
EOF
echo "kotlin flow: 1 passed, 0 failed"
