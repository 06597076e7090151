"""Reranking of a first-stage list: attention features of the candidates (``features``: computed once, cached in
``INDEX_DIR/attention/``), the AAS and PAR scores (``scores``) and applying them to a result list (``apply``)."""
