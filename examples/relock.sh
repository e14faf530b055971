#!/usr/bin/env bash
# Regenerates the example lock files.
#
# This machine (and CI) has no internet, so the locks are made against a local
# stand-in for each example's pinned resolvers: a real unbound in a network
# namespace that owns the resolver addresses (1.1.1.1, 10.53.0.10, …), serving
# documentation-range addresses (RFC 5737, RFC 3849). `egressc lock` itself runs
# unchanged and talks only to the pinned addresses, as it would in production.
#
# Usage (root): examples/relock.sh [path/to/egressc [policy.yaml...]]
# (all examples when no policy is named; a relock changes `resolved_at`, so
# relock only what changed to keep the other snapshots as they are)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
egressc=${1:-$here/../target/debug/egressc}
ns=egressc-relock-$$
conf=$(mktemp -d)
cleanup() { kill "${pid:-0}" 2>/dev/null || true; ip netns del "$ns" 2>/dev/null || true; rm -rf "$conf"; }
trap cleanup EXIT

ip netns add "$ns"
ip -n "$ns" link set lo up
resolvers=(1.1.1.1 10.53.0.10 fd53::10 9.9.9.9 2620:fe::fe)
for r in "${resolvers[@]}"; do
  case $r in *:*) ip -n "$ns" addr add "$r/128" dev lo nodad ;; *) ip -n "$ns" addr add "$r/32" dev lo ;; esac
done

{
  echo "server:"
  for r in "${resolvers[@]}"; do echo "  interface: $r"; done
  cat <<CONF
  port: 53
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$conf"
  pidfile: ""
  use-syslog: no
  num-threads: 1
  module-config: "iterator"
  access-control: 0.0.0.0/0 allow
  access-control: ::/0 allow
  do-ip6: yes
  local-zone: "security." static
  local-zone: "org." static
  local-zone: "com." static
  local-zone: "dev." static
  local-zone: "io." static
  local-zone: "internal." static
  local-zone: "debian.org." static
  local-data: "api.openclaw.security. 300 IN CNAME edge.openclaw.security."
  local-data: "edge.openclaw.security. 60 IN A 192.0.2.10"
  local-data: "edge.openclaw.security. 60 IN A 192.0.2.11"
  local-data: "edge.openclaw.security. 60 IN AAAA 2001:db8:a::10"
  local-data: "openexchangerates.org. 600 IN A 198.51.100.7"
  local-data: "registry.internal.ourcompany.com. 300 IN A 10.40.1.5"
  local-data: "registry.internal.ourcompany.com. 300 IN AAAA fd40::5"
  local-data: "log-collector.internal. 300 IN A 10.40.2.9"
  local-data: "api.github.com. 60 IN A 203.0.113.6"
  local-data: "api.github.com. 60 IN A 203.0.113.7"
  local-data: "api.github.com. 60 IN AAAA 2001:db8:6::6"
  local-data: "pkg.go.dev. 300 IN A 203.0.113.21"
  local-data: "pkg.go.dev. 300 IN AAAA 2001:db8:21::1"
  local-data: "dl.k8s.io. 3600 IN CNAME cdn.dl.k8s.io."
  local-data: "cdn.dl.k8s.io. 300 IN A 203.0.113.30"
  local-data: "cdn.dl.k8s.io. 300 IN A 203.0.113.31"
  local-data: "github.com. 60 IN A 203.0.113.3"
  local-data: "index.crates.io. 300 IN A 203.0.113.40"
  local-data: "index.crates.io. 300 IN AAAA 2001:db8:40::1"
  local-data: "static.crates.io. 300 IN A 203.0.113.41"
  local-data: "static.crates.io. 300 IN A 203.0.113.42"
  local-data: "deb.debian.org. 300 IN CNAME debian.map.fastlydns.net."
  local-data: "debian.map.fastlydns.net. 30 IN A 198.51.100.50"
  local-data: "debian.map.fastlydns.net. 30 IN AAAA 2001:db8:50::50"
  local-data: "metrics.ci.internal. 300 IN A 10.20.9.9"
  local-data: "pypi.org. 300 IN A 203.0.113.60"
  local-data: "pypi.org. 300 IN AAAA 2001:db8:60::1"
CONF
} > "$conf/unbound.conf"
# fastlydns.net is outside the zones above: give it its own static zone.
sed -i 's/^  local-zone: "internal." static$/&\n  local-zone: "fastlydns.net." static/' "$conf/unbound.conf"

ip netns exec "$ns" unbound -d -c "$conf/unbound.conf" &
pid=$!
sleep 1
policies=("${@:2}")
[ ${#policies[@]} -gt 0 ] || policies=("$here"/*/policy.yaml)
for policy in "${policies[@]}"; do
  ip netns exec "$ns" "$egressc" lock "$policy"
done
