"""kubegate: a Kubernetes-native API gateway (core package: API models, compiler, data plane, CLI)."""

__version__ = "0.1.0"
