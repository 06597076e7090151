"""What every compiled single-query text encoder shares (TorchScript in ``encoders.query_text``, ONNX Runtime in
``encoders.query_onnx``): the call contract, the fidelity record and the thread count. Both runtimes import it;
``encoders.query_text`` builds and checks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from encoders.text import TextBatch

QUERY_THREADS = 1


@dataclass
class FidelityCheck:
    """How a compiled encoder compared with the eager float32 model on the probe queries when it was built."""

    max_difference: float = 0.0  # worst |compiled - eager| over the probe embeddings
    min_cosine: float = 1.0  # worst cosine with the eager embedding
    probe_ms: float = 0.0  # median time per probe query (what ``auto`` compares)


class CompiledTextQueryEncoder:
    """Call with one TextBatch of batch size 1; returns its (1, D) float32 embedding.

    Subclasses say how the graph runs (``_run``); the kind, the fidelity check and ``describe`` are shared."""

    kind: str  # one of TEXT_ENCODER_KINDS except auto
    runtime: str  # for people: what executes the graph

    def __init__(self) -> None:
        self.check = FidelityCheck()

    def __call__(self, batch: TextBatch) -> torch.Tensor:
        if batch.input_ids.shape[0] != 1:
            raise ValueError(f"the {self.runtime} query encoder takes one query at a time")
        return self._run(batch)

    def _run(self, batch: TextBatch) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        """What was chosen and why, for the server's start-up line and benchmark reports."""
        return (f"{self.runtime}, {self.check.probe_ms:.1f} ms per probe query, "
                f"min cosine {self.check.min_cosine:.5f} with float32")
