#!/usr/bin/env bash
# Runs the image as a platform would, against the PostgreSQL on 127.0.0.1:5432: a one-shot
# `migrate`, then `serve` with a read-only root file system; checks readiness, a user's round
# trip, the health check, the non-root uid, and a SIGTERM with a request in flight. Prints the
# image size and the start-to-ready time.
#
#   deploy/check-image.sh [TAG]     (default localhost/portcullis:dev; built first)
#
# podman logs errors about systemd health-check timers where systemd does not run; the health
# check itself is run by hand below. This sandbox's podman needs runc (crun refuses its hybrid cgroups) and no default ulimits
# (setting rlimits is refused); both are set here, for this script only.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${1:-localhost/portcullis:dev}"
conf="$(mktemp -d)"
printf '[containers]\ndefault_ulimits = []\n' >"$conf/containers.conf"
export CONTAINERS_CONF="$conf/containers.conf"
export PODMAN="podman --runtime runc"
podman=($PODMAN)

# Always from this tree: an image left by an earlier run would test old code.
deploy/build-image.sh "$tag"

pg="postgres://postgres@127.0.0.1:5432"
db="portcullis_image_$$"
name="portcullis-check-$$"
volume="portcullis-check-$$"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
metrics="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
secret="$(head -c 48 /dev/urandom | base64 | tr -d '\n')"
base="http://127.0.0.1:$port"
cleanup() {
  "${podman[@]}" rm -f "$name" "$name-sqlite" >/dev/null 2>&1 || true
  "${podman[@]}" volume rm -f "$volume" "$volume-sqlite" >/dev/null 2>&1 || true
  psql "$pg/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$conf"
}
trap cleanup EXIT
fail() { echo "check-image: $*" >&2; exit 1; }

psql "$pg/postgres" -qc "CREATE DATABASE $db" >/dev/null
env_args=(-e "DATABASE_URL=$pg/$db" -e "SECRET_KEY=$secret" -e "PORT=$port"
          -e "METRICS_LISTEN=127.0.0.1:$metrics" -e "SHUTDOWN_DRAIN_SECONDS=1")

size="$("${podman[@]}" image inspect --format '{{.Size}}' "$tag")"
echo "image $tag: $((size / 1000000)) MB ($size bytes)"
[ "$size" -lt 30000000 ] || fail "the image is $size bytes, over 30 MB"

echo "== start to ready on the SQLite default (a fresh /data volume)"
sqlite_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
best=""
for round in 1 2 3; do
  "${podman[@]}" volume rm -f "$volume-sqlite" >/dev/null 2>&1 || true
  "${podman[@]}" create --name "$name-sqlite" --network host --read-only \
    -v "$volume-sqlite:/data" -e "SECRET_KEY=$secret" -e "PORT=$sqlite_port" \
    -e "METRICS_LISTEN=127.0.0.1:0" -e "SHUTDOWN_DRAIN_SECONDS=0" "$tag" >/dev/null
  started="$(date +%s%N)"
  "${podman[@]}" start "$name-sqlite" >/dev/null
  until curl -fsS -o /dev/null "http://127.0.0.1:$sqlite_port/ready" 2>/dev/null; do
    [ $(( ($(date +%s%N) - started) / 1000000 )) -lt 20000 ] \
      || { "${podman[@]}" logs "$name-sqlite" >&2; fail "SQLite: /ready never answered 200"; }
    sleep 0.005
  done
  took=$(( ($(date +%s%N) - started) / 1000000 ))
  echo "round $round: podman start to /ready 200 in ${took} ms"
  if [ -z "$best" ] || [ "$took" -lt "$best" ]; then best="$took"; fi
  "${podman[@]}" rm -f -t 10 "$name-sqlite" >/dev/null
done
"${podman[@]}" volume rm -f "$volume-sqlite" >/dev/null 2>&1 || true
echo "SQLite start to ready (best of 3, container start included): ${best} ms"
# What the container runtime alone costs: the same start, of a process that exits at once.
overhead=""
for round in 1 2 3; do
  started="$(date +%s%N)"
  "${podman[@]}" run --rm --network host "$tag" --version >/dev/null
  took=$(( ($(date +%s%N) - started) / 1000000 ))
  if [ -z "$overhead" ] || [ "$took" -lt "$overhead" ]; then overhead="$took"; fi
done
echo "the same container running --version: ${overhead} ms (best of 3): the runtime's share"

echo "== migrate, as a one-shot container"
# Output is read whole before it is searched: `grep -q` stops reading at its first match, and
# under pipefail the writer's broken pipe would fail the check.
migrated="$("${podman[@]}" run --rm --network host --read-only "${env_args[@]}" "$tag" migrate)"
grep -q "migrations applied" <<<"$migrated" || fail "migrate did not apply the migrations"

echo "== serve, read-only, /data on a volume"
started="$(date +%s%N)"
"${podman[@]}" run -d --name "$name" --network host --read-only --tmpfs /tmp \
  -v "$volume:/data" "${env_args[@]}" "$tag" >/dev/null
until curl -fsS -o /dev/null "$base/ready" 2>/dev/null; do
  [ $(( ($(date +%s%N) - started) / 1000000 )) -lt 20000 ] \
    || { "${podman[@]}" logs "$name" >&2; fail "/ready never answered 200"; }
  sleep 0.01
done
echo "PostgreSQL: podman run to /ready 200 in $(( ($(date +%s%N) - started) / 1000000 )) ms"
pid="$("${podman[@]}" inspect --format '{{.State.Pid}}' "$name")"
logs="$("${podman[@]}" logs "$name" 2>&1)"
grep -q '"listening"' <<<"$logs" || fail "no listening line in the log"

echo "== a user's round trip through the container"
email="image-$$@example.com"
password="correct horse battery staple $$"
status="$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
  -d "{\"email\":\"$email\",\"password\":\"$password\"}" "$base/auth/register")"
[ "$status" = 201 ] || fail "register answered $status"
token="$(curl -fsS -H 'Content-Type: application/json' \
  -d "{\"email\":\"$email\",\"password\":\"$password\"}" "$base/auth/login" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
curl -fsS -o /dev/null -H "Authorization: Bearer $token" "$base/protected/user" \
  || fail "/protected/user refused the token"
status="$(curl -s -o /dev/null -w '%{http_code}' "$base/metrics")"
[ "$status" = 404 ] || fail "/metrics on the API's address answered $status"
scraped="$(curl -fsS "http://127.0.0.1:$metrics/metrics")"
grep -q portcullis_http_requests_total <<<"$scraped" \
  || fail "the management listener does not serve /metrics"

echo "== the image's health check, and who runs"
"${podman[@]}" healthcheck run "$name" || fail "the health check failed"
uid="$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")"
[ "$uid" = 10001 ] || fail "the service runs as uid $uid, not 10001"
"${podman[@]}" exec "$name" /portcullis --version

echo "== SIGTERM with a request in flight"
python3 - "$port" "$name" "${podman[*]}" <<'PY'
import socket, subprocess, sys, time
port, name, podman = int(sys.argv[1]), sys.argv[2], sys.argv[3].split()
body = b'{"email":"late@example.com","password":"whatever it is"}'
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
time.sleep(0.2)
subprocess.run(podman + ["kill", "--signal", "TERM", name], check=True, capture_output=True)
time.sleep(0.3)
s.sendall(body[10:])
s.settimeout(10)
answer = s.recv(4096).decode(errors="replace")
if not answer.startswith("HTTP/1.1 401"):
    sys.exit(f"the request in flight got {answer[:40]!r}")
print("the request in flight was answered: " + answer.splitlines()[0])
PY
code="$("${podman[@]}" wait "$name")"
[ "$code" = 0 ] || { "${podman[@]}" logs "$name" >&2; fail "the container exited $code after SIGTERM"; }
echo "exit code after SIGTERM: $code"
echo "check-image: all good"
