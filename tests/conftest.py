"""Registers the shared fixture modules (one module per area, each owned by one author)."""

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.netns",
    "tests.fixtures.shim",
    "tests.fixtures.daemon",
    "tests.fixtures.runtimes",
    "tests.fixtures.kube",
    "tests.fixtures.neutron",
    "tests.fixtures.lab",
    "tests.fixtures.cloud_proxy",
    "tests.fixtures.controller",
    "tests.fixtures.cluster_node",
]
