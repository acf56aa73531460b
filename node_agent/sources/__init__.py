"""Registry sources: turn Kubernetes / Istio objects into model records for the name table.

* `convert`: one API object (a dict as `kubectl get -o json` shows it) -> one model record; shared by
  every source so a watch event and a YAML file mean exactly the same thing.
* `static`: YAML files of such objects (a demo mesh, a simulated node's pods, fixed extra entries).
"""
