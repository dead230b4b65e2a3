from tests.deployments.conftest import versions

__all__ = ["versions"]
