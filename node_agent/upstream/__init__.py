"""Talking to the upstream servers (kube-dns): failover policy, UDP, TCP."""
