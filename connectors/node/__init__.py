"""The connector node: one FastAPI app per institution, its runtime, routers and services.

``app`` builds the app from the node's settings; ``runtime`` holds its keys, store, ledger and
peers; ``routers/`` has one router per resource and ``wire/`` their pydantic models;
``compute`` wires the framework's protocols to HTTP; ``queries`` and ``training`` run the
analyst's jobs; ``negotiation``, ``transfer`` and ``federation`` drive DSP and the space's
shared services; ``sources`` reads the node's registered data files.

The node never imports the CLI, local spaces or the demo (``tests/test_layout.py``).
"""

__all__: list[str] = []
