"""Remote-sensing image-text retrieval engine: data layer, CLI, query and evaluation.

Kept import-light on purpose: ``engine data check`` must not pay for importing torch.
"""

__version__ = "0.1.0"
