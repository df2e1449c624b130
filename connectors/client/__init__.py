"""Talking to nodes over HTTP, without a web framework: what a bank's systems and the tools use.

``http`` has the signed member client and the staff (admin-token) client; ``analyst`` the
analyst's query client; ``catalog`` the catalog and negotiation helpers; ``results`` model and
score files and receipt checks; ``verify`` a node's ledger verified from outside. The client
never imports the node (``tests/test_layout.py``).
"""

__all__: list[str] = []
