# gosyncd configuration: the same file form as the original tool.
# Copy to /etc/gosyncd/config.hcl and adapt; `gosyncd -config FILE check-config` checks it.

# Where the daemon listens. ":8080" means every address (IPv6 dual-stack, IPv4 if the
# host has no IPv6); "10.0.0.2:8080" or "[fd00::2]:8080" name one address.
bind_address = ":8080"

# Every node of the group, "host:port" (host names allowed). The same list can be used
# on every node: the entry that is this node is recognised and skipped.
remotes = [
  "10.0.0.2:8080",
  "10.0.0.3:8080",
  "10.0.0.4:8080"
]

# Mutual TLS: every node presents a certificate that chains to tls_ca_certificate.
# The original setup works too: one self-signed certificate named by all three keys.
# Relative paths are relative to this file's directory.
tls_ca_certificate = "/etc/gosyncd/gosyncd.crt"
tls_certificate = "/etc/gosyncd/gosyncd.crt"
tls_private_key = "/etc/gosyncd/gosyncd.key"

# Optional: which client addresses may read and write this node's directories.
# By default, every address the remotes above resolve to; allow_from replaces that list
# (addresses, networks, host names), for peers behind NAT or multi-homed hosts.
# allow_from = ["10.0.0.0/24"]

# Optional: the share of a directory's entries on a peer that `gosyncd sync` may delete
# without --force (default 0.5); emptying a directory always needs --force.
# max_delete_share = 0.5

# Optional: what this node does with changes. "send-receive" (the default) pushes its
# edits to every peer and applies theirs; "receive-only" applies what its peers push and
# pushes nothing: an edit made here is reported as drift (a warning, `gosyncd status`,
# the gosyncd_local_edits_not_pushed metric), and `gosyncd sync` is refused.
# role = "send-receive"

# Optional: the local prefix under which the directories below live on this host
# (default "/"). Paths on the wire stay logical ("/etc/haproxy/haproxy.cfg").
# root = "/"

# Optional: where the daemon keeps its spool of changes not yet delivered to a peer
# (replayed after a restart; empty in steady state), and its lock (default
# "/var/lib/gosyncd", which the systemd unit makes). Each daemon needs its own.
# state_directory = "/var/lib/gosyncd"

# Optional: how often the daemon compares its trees with each peer's and reports the
# drift (default "5m"; also once at start-up and when a peer comes back).
# reconcile_interval = "5m"

# Optional: the watcher pushes a burst of edits once every file it wrote is closed (or
# renamed into place) and this long has passed with no new event (default "20ms").
# debounce = "20ms"

# Optional: how long a file may stay open for writing before the watcher stops waiting
# for it to be closed and pushes it as it is, with a warning (default "10m").
# open_write_timeout = "10m"

# Optional: keep the previous version of every file a sync replaces or deletes.
# backup {
#   directory = "/var/lib/gosyncd/backups"
#   keep = 5
# }

directory "/etc/haproxy" {
  # Optional: check the directory after every change (a received batch that fails is
  # put back and reported to the sender), and reload once it is accepted.
  # validate = "haproxy -c -f /etc/haproxy/haproxy.cfg"
  # on_change = ["systemctl reload haproxy"]
  # Optional: when an edit made here and one pushed from a peer conflict, keep the one
  # modified later on every node, the other in the backups (needs the backup block
  # above; the nodes' clocks must be roughly in sync). The default, "refuse", refuses
  # and reports the conflict.
  # on_conflict = "newest"
  exclude = [
    # an absolute path: that path and everything below it
    "/etc/haproxy/errors",
    # no leading "/": a pattern matched against file names
    "*.swp",
    "*~",
  ]
}

directory "/etc/nginx" {
}

# Optional: the daemon's limits (defaults shown; see the README for each).
# limits {
#   max_request_size = "512MiB"
#   max_file_size = "256MiB"
#   max_batch_entries = 1000000
#   max_manifest_size = "256MiB"
#   handshake_timeout = "10s"
#   header_timeout = "10s"
#   idle_timeout = "30s"
#   max_connections = 256
#   max_handshakes = 64
#   max_handshakes_per_address = 8
#   max_concurrent_applies = 4
# }
