"""Scene label → captions: how a labelled scene collection (AID, any ``<Class>/<image>`` tree) becomes image–text
pairs for retrieval training ("annotation unification", as RemoteCLIP did with its detection and scene data).

Each class gets a *caption pool*: every noun phrase of the class (``engine.data.scene_names``: the main name and
its paraphrases, "a dense residential area", "closely packed houses", ...) put through every sentence template
below, plus the lexicon's whole-sentence descriptions of such a scene ("many houses are packed closely
together."). Each image draws ``count`` distinct captions from its class's pool, with a random generator seeded
by (seed, class, image key): the same seed gives the same captions on every machine and in every run, another
seed another draw. A class that the lexicon does not know still gets captions: its name read as words, with an
article, through the templates.

The pool is written in our own words; it is deliberately not the wording of the zero-shot prompt set
(``engine.evaluation.zero_shot_prompts``), so that the zero-shot benchmark does not score the training templates.
"""

from __future__ import annotations

import random
from functools import lru_cache

from engine.data.scene_names import class_key, scene_words

DEFAULT_CAPTIONS_PER_IMAGE = 5
DEFAULT_CAPTION_SEED = 0

# Sentence templates; {} takes a noun phrase with its article.
TEMPLATES: tuple[str, ...] = (
    "an aerial image of {}.",
    "{} seen from above.",
    "a satellite photo showing {}.",
    "an overhead view of {}.",
    "this picture shows {}.",
    "{} in a high resolution aerial photograph.",
    "a top-down view of {}.",
    "there is {} in this scene.",
)


@lru_cache(maxsize=None)
def caption_pool(label: str) -> tuple[str, ...]:
    """Every caption the converter can give an image of class ``label``, in a fixed order, without repeats."""
    words = scene_words(label)
    candidates = [template.format(phrase) for phrase in words.phrases for template in TEMPLATES]
    candidates += list(words.says)
    pool: list[str] = []
    for caption in candidates:
        caption = caption[0].upper() + caption[1:]
        if caption not in pool:
            pool.append(caption)
    return tuple(pool)


def scene_captions(label: str, image_key: str, count: int = DEFAULT_CAPTIONS_PER_IMAGE,
                   seed: int = DEFAULT_CAPTION_SEED) -> list[str]:
    """``count`` distinct captions for one image of class ``label`` (all of the pool when it is smaller).

    ``image_key`` names the image within its dataset (its relative path): two images of a class get different
    draws, and the draw does not depend on which other images are in the dataset."""
    if count < 1:
        raise ValueError(f"captions per image must be >= 1, got {count}")
    pool = caption_pool(label)
    generator = random.Random(f"{seed}:{class_key(label)}:{image_key}")
    return generator.sample(pool, min(count, len(pool)))
