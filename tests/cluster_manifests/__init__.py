"""Offline checks of the cluster manifests (cluster/): schemas, generation, sizing."""
