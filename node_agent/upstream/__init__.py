"""Talking to the upstream servers (kube-dns). `client.Upstream` is the entry point; it composes
`policy` (server order, health, attempts, failure reasons: pure decisions), `udp` (one exchange over
a fresh connected socket), `tcp` (the kept-open pipelined connection for truncated answers) and
`stats` (the counters the metrics collector reads). The DNS bytes themselves are node_agent.dns's."""
