# Shared by the battery scripts: builds the release `intercom` and test helper,
# starts `intercom echo` on a private bus and cleans up on exit.
# Sets: bin (build products), bus (the bus directory), service (its pid).
config=${CONFIG:-release}
swift build -c "$config" --product intercom >/dev/null
swift build -c "$config" --product IntercomTestHelper >/dev/null
bin=$(swift build -c "$config" --show-bin-path)
bus=$(mktemp -d /tmp/intercom-battery.XXXXXX)
chmod 700 "$bus"
start_echo() {
  INTERCOM_BUS_DIR=$bus "$bin/intercom" echo --name echo 2>/dev/null &
  service=$!
  trap 'kill $service 2>/dev/null; wait $service 2>/dev/null; rm -rf "$bus"' EXIT
  for _ in $(seq 1 200); do [ -S "$bus/echo.sock" ] && [ -f "$bus/echo.json" ] && break; sleep 0.05; done
}
