"""Retrieval evaluation: exact Recall@K / mR under PIR's protocol."""
