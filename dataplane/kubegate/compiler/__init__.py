"""The pure compiler: Kubernetes-shaped objects in, a versioned route table and per-route status out.

No kopf, no Kubernetes client: the operator, `kubegate compile` and standalone mode share it.
"""
