"""The kernel side: BPF programs and maps, cgroups, the listen address, VIP maps."""
