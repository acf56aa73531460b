"""The BPF programs (dns_steer.c) and their map layouts (dns_steer.h), installed as package data of
node_agent.kernel.bpf (pyproject.toml maps that package to this directory). This file makes it a
regular package, which setuptools' editable installs need to find a package mapped outside its
parent; kernel/maps.py finds the sources with importlib.resources."""
