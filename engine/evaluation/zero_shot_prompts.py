"""The fixed prompt set of the zero-shot scene benchmark (``engine eval DIR --zero-shot``).

A class's text embedding is the normalised mean of the model's embeddings of these prompts, each filled with the
class's main noun phrase (``engine.data.scene_names``: "DenseResidential" → "a dense residential area"), the
prompt ensembling of CLIP's zero-shot classifiers. The set is fixed so that numbers stay comparable across
models and sessions; it shares no template with the training-caption converter (``engine.data.scene_captions``).
Changing it changes every zero-shot number: bump ``PROMPT_SET`` when you do.
"""

from __future__ import annotations

from engine.data.scene_names import scene_words

PROMPT_SET = "rs-scenes-v1"
PROMPTS: tuple[str, ...] = (
    "an aerial photograph of {}.",
    "a satellite image of {}.",
    "{} viewed from overhead.",
    "a bird's-eye view of {}.",
    "an image of {} taken from the air.",
    "a top view of {}.",
)


def class_prompts(label: str) -> list[str]:
    """The prompts of one class, in ``PROMPTS`` order."""
    name = scene_words(label).name
    return [prompt.format(name) for prompt in PROMPTS]
