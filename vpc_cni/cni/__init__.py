"""The CNI protocol: requests, configs, results, versions and errors (pure, no I/O).

See docs/cni.md for the rules each module enforces.
"""
