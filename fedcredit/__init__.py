"""fedcredit: a privacy-preserving federated data exchange for small-business credit.

The design's folders (``common/ world/ node/ consent/ ledger/ coordinator/ training/
clients/`` and the generated ``proto/fedcredit/v1``) stay at the top of the source tree;
this package links them under the one import name ``fedcredit`` (``fedcredit.node``,
``fedcredit.v1``, ...). A built wheel holds real files under ``fedcredit/`` and installs
no other top-level name. The layer contract between them is in ``pyproject.toml``
(``[tool.importlinter]``) and is checked by ``lint-imports`` in ``make test``.
"""
