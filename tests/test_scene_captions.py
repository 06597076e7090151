"""Scene label → captions (engine.data.scene_captions) and class names as words (engine.data.scene_names)."""

from __future__ import annotations

import pytest

from engine.data.scene_captions import TEMPLATES, caption_pool, scene_captions
from engine.data.scene_names import LEXICON, class_key, readable_words, scene_words, with_article
from engine.evaluation.zero_shot_prompts import PROMPTS, class_prompts

AID = ("Airport BareLand BaseballField Beach Bridge Center Church Commercial DenseResidential Desert Farmland Forest "
       "Industrial Meadow MediumResidential Mountain Park Parking Playground Pond Port RailwayStation Resort River "
       "School SparseResidential Square Stadium StorageTanks Viaduct").split()
UCM = ("agricultural airplane baseballdiamond beach buildings chaparral denseresidential forest freeway golfcourse "
       "harbor intersection mediumresidential mobilehomepark overpass parkinglot river runway sparseresidential "
       "storagetanks tenniscourt").split()
UNKNOWN = ["ThermalPowerStation", "sea_ice", "circular-farmland", "Snowberg", "x"]


@pytest.mark.parametrize("label", AID + UCM)
def test_every_class_of_the_training_collections_is_in_the_lexicon(label):
    assert class_key(label) in LEXICON


@pytest.mark.parametrize("label", AID + UCM + UNKNOWN)
def test_every_class_gets_distinct_captions_that_name_it(label):
    captions = scene_captions(label, f"{label}/img_1.jpg", count=5, seed=0)
    assert len(captions) == 5 == len(set(captions))
    pool = caption_pool(label)
    assert set(captions) <= set(pool)
    assert all(caption[0].isupper() and caption.endswith(".") for caption in pool)
    name = scene_words(label).name.split(" ", 1)[-1]  # without its article
    assert sum(name in caption.lower() for caption in pool) >= len(TEMPLATES)  # every template carries the name


def test_captions_are_deterministic_by_seed_and_vary_by_image():
    first = [scene_captions("DenseResidential", f"DenseResidential/d_{n}.jpg", 5, seed=0) for n in range(20)]
    again = [scene_captions("DenseResidential", f"DenseResidential/d_{n}.jpg", 5, seed=0) for n in range(20)]
    other_seed = [scene_captions("DenseResidential", f"DenseResidential/d_{n}.jpg", 5, seed=1) for n in range(20)]
    assert first == again
    assert first != other_seed
    assert len({tuple(c) for c in first}) > 10  # images of a class do not all get the same draw


def test_the_draw_does_not_depend_on_the_process(tmp_path):
    """str hashing is salted per process; the draw must not be."""
    import subprocess
    import sys

    code = ("from engine.data.scene_captions import scene_captions;"
            "print(scene_captions('Airport', 'Airport/airport_7.jpg', 5, 3))")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout for seed in ("1", "2")}
    assert len(outputs) == 1


def test_small_pools_give_every_caption_once_and_count_is_checked():
    pool = caption_pool("x")
    assert scene_captions("x", "k", count=len(pool) + 10) == scene_captions("x", "k", count=len(pool) + 10)
    assert sorted(scene_captions("x", "k", count=len(pool) + 10)) == sorted(pool)
    with pytest.raises(ValueError):
        scene_captions("x", "k", count=0)


def test_class_keys_merge_spellings_only():
    assert class_key("DenseResidential") == class_key("denseresidential") == class_key("dense_residential")
    assert class_key("BaseballField") != class_key("baseballdiamond")


def test_names_read_as_words():
    assert readable_words("DenseResidential") == "dense residential"
    assert readable_words("golfcourse") == "golf course"
    assert readable_words("storage_tanks") == "storage tanks"
    assert readable_words("tenniscourts") == "tennis courts"
    assert readable_words("Ground_Track_Field") == "ground track field"
    assert readable_words("zzqx") == "zzqx"  # unknown run-together words stay whole
    assert with_article("airport") == "an airport" and with_article("storage tanks") == "storage tanks"
    assert scene_words("ThermalPowerStation").name == "a thermal power station"


def test_zero_shot_prompts_are_not_the_training_templates():
    assert not set(PROMPTS) & set(TEMPLATES)
    assert set(class_prompts("Airport")).isdisjoint(caption_pool("Airport"))
    assert class_prompts("DenseResidential")[0] == "an aerial photograph of a dense residential area."
