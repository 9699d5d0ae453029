"""Shared pytest fixtures, one plugin module per concern:

- ``tests.fixtures.apiserver``: a lab API server on a free loopback port with the
  project's CRDs applied (``lab_api``).
- ``tests.fixtures.netns``: network namespaces named ``vmo-<run id>-...`` that are
  removed after the test even when it fails (``netns``).
"""

pytest_plugins = ["tests.fixtures.apiserver", "tests.fixtures.netns"]
