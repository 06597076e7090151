"""Query engine: filtered k-NN search over an index folder, AAS/PAR reranking, output (table, JSON, HTML
gallery) and a warm HTTP server.

Importing this package is free: torch, faiss and the encoders are imported inside the functions that need them,
so ``engine --help`` and ``engine data`` never pay for them. Entry points: ``engine query``, ``engine serve``,
``engine.query.engine.QueryEngine``.
"""
