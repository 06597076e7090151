"""Remote-sensing image-text retrieval engine: data layer, CLI, query and evaluation.

Kept import-light on purpose: ``engine data check`` must not pay for importing torch, and neither does
``import engine``. The Python API (docs/python.md) loads what it needs on first use:

    import engine
    with engine.open("runs/idx") as ix:          # an index folder built by `engine index`
        table = ix.search("airport with runways", k=10, where="split = 'test'")
"""

from engine.errors import EngineError

__version__ = "0.1.0"
__all__ = ["EngineError", "Index", "load_model", "open"]


def open(index=None, *, model=None, device="auto", text_encoder="eager", batch=False,  # noqa: A001
         filter_timeout=None, query_bank=True):
    """Open an index folder for searching: an ``engine.Index`` (a context manager; ``close()`` releases it).

    ``index``: the folder (None: this project's last index, else the default one, named on stderr);
    ``model``: a model name or folder overriding the index's own (it must be the same model); ``device``:
    auto | cpu | cuda; ``text_encoder``: eager, or a compiled kind of ``engine serve --text-encoder`` (a few
    seconds more to open, less per query); ``batch``: encode queries from concurrent threads together;
    ``filter_timeout``: seconds a ``where`` filter may run (``engine query --filter-timeout``; None: its
    default, 0: no limit); ``query_bank``: False ranks by the plain cosine even when the model has a query bank
    (``engine query --no-query-bank``)."""
    from engine.query.api import open_index

    return open_index(index, model=model, device=device, text_encoder=text_encoder, batch=batch,
                      filter_timeout=filter_timeout, query_bank=query_bank)


def load_model(name=None):
    """A PIR model in eval mode: None or ``"default"`` (the shipped default), a shipped name, or a folder."""
    from engine.query.api import load_model as load

    return load(name)


def __getattr__(name):
    if name == "Index":
        from engine.query.api import Index

        return Index
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
