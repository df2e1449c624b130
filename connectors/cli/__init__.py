"""The ``trusted-space`` command line: ``main`` builds the app, one module per command group.

Nothing imports this package but the console script (``tests/test_layout.py``).
"""

__all__: list[str] = []
