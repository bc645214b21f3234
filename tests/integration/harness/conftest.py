from tests.harness.fixtures import demo_image, host_cluster_factory  # noqa: F401
