"""Release tooling: ship the default model, make the embedded sample, write the model card, rewrite generated
docs blocks. Run as ``python -m release.NAME`` from the repository root."""
