"""Scene class names as words: one spelling key per class, a readable noun phrase, and what else to call it.

Why: scene collections name their classes as folder or file names (``DenseResidential``, ``denseresidential``,
``storage_tanks``). Mixed training has to know when two datasets name the same class (``class_key``: same
spelling up to case, spaces, ``_`` and ``-`` is one class), and the caption converter and the zero-shot prompts
have to turn a name into English ("a dense residential area"). ``LEXICON`` holds our own wording for the classes
of the scene collections this project trains on (AID's 30 and UC Merced's 21); any other name is read by
splitting CamelCase, separators and run-together words (``golfcourse`` → "golf course") and given an article.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class SceneWords:
    """How a class is spoken of: ``name`` is its main noun phrase (with its article), ``also`` are other noun
    phrases for it, ``says`` are whole sentences a person might write about such a scene."""

    name: str
    also: tuple[str, ...] = ()
    says: tuple[str, ...] = ()

    @property
    def phrases(self) -> tuple[str, ...]:
        return (self.name, *self.also)


def _words(name: str, also: str = "", says: str = "") -> SceneWords:
    return SceneWords(name, tuple(filter(None, also.split("|"))), tuple(filter(None, says.split("|"))))


# key (see class_key) -> words. Noun phrases carry their article ("a", "an", none for plurals and mass nouns).
LEXICON: dict[str, SceneWords] = {
    "agricultural": _words("farmland", "cultivated fields|crop fields in rows",
                           "fields of crops are laid out in neat strips.|the land is divided into farmed plots."),
    "airplane": _words("an airplane", "a parked aircraft|a jet on the apron",
                       "a plane stands on the tarmac.|an aircraft is parked beside the terminal."),
    "airport": _words("an airport", "an airfield with runways|an aerodrome",
                      "runways and taxiways cross the open ground.|aircraft are parked near the terminal buildings."),
    "bareland": _words("bare land", "barren ground|empty unplanted land",
                       "the ground is bare with almost no vegetation.|a stretch of exposed soil and sand."),
    "baseballdiamond": _words("a baseball diamond", "a baseball field|a ball park",
                              "a fan-shaped field with a sandy infield.|the bases form a square on the grass."),
    "baseballfield": _words("a baseball field", "a baseball diamond|a ball park",
                            "a fan-shaped field with a sandy infield.|the bases form a square on the grass."),
    "beach": _words("a beach", "a sandy shore|a coastline with sand",
                    "waves roll onto a strip of sand.|the sea meets a long sandy shore."),
    "bridge": _words("a bridge", "a bridge over water|a road bridge across a river",
                     "a road crosses the water on a bridge.|a long span links the two banks."),
    "buildings": _words("buildings", "a group of large buildings|rooftops of several buildings",
                        "several buildings stand close to each other.|large roofs fill most of the picture."),
    "center": _words("a city centre", "a downtown area|an urban core",
                     "tall buildings crowd the middle of the city.|dense blocks of offices line the streets."),
    "chaparral": _words("chaparral", "dry shrubland|scrub-covered hills",
                        "the land is covered with sparse dry bushes.|patches of scrub grow on brown soil."),
    "church": _words("a church", "a cathedral|a chapel",
                     "a church with a cross-shaped roof stands among houses.|the church building rises above its square."),
    "commercial": _words("a commercial area", "shops and offices|a business district",
                         "shops and office blocks line the roads.|large commercial buildings with car parks."),
    "denseresidential": _words("a dense residential area", "closely packed houses|a crowded neighbourhood",
                               "many houses are packed closely together.|rows of homes leave little space between them."),
    "desert": _words("a desert", "sand dunes|an arid sandy plain",
                     "dunes of sand stretch across the scene.|the dry land shows no plants at all."),
    "farmland": _words("farmland", "cultivated fields|crop fields in rows",
                       "fields of crops are laid out in neat strips.|the land is divided into farmed plots."),
    "forest": _words("a forest", "dense woodland|a stand of trees",
                     "the trees grow so thickly that the ground is hidden.|a green canopy of trees covers everything."),
    "freeway": _words("a freeway", "a highway with several lanes|a motorway",
                      "a multi-lane road runs straight through the scene.|cars travel on a wide divided highway."),
    "golfcourse": _words("a golf course", "golf greens and fairways|a golf club",
                         "smooth fairways wind between trees and sand bunkers.|a green with a flag sits beside a fairway."),
    "harbor": _words("a harbour", "a marina with boats|a port with docked boats",
                     "many boats are moored along the piers.|boats are docked in calm water."),
    "industrial": _words("an industrial area", "factories and warehouses|an industrial estate",
                         "large factory halls stand next to storage yards.|warehouses with flat roofs fill the area."),
    "intersection": _words("an intersection", "a crossroads|a road junction",
                           "two roads cross each other at a junction.|cars wait where the streets meet."),
    "meadow": _words("a meadow", "a grassland|an open field of grass",
                     "a large area of grass with no buildings.|the green field is smooth and open."),
    "mediumresidential": _words("a medium residential area", "a suburban neighbourhood|houses with gardens",
                                "houses with yards line the curved streets.|homes are spaced out among trees."),
    "mobilehomepark": _words("a mobile home park", "a trailer park|rows of mobile homes",
                             "small mobile homes are parked in tight rows.|many trailers stand side by side."),
    "mountain": _words("mountains", "a mountain range|rugged peaks",
                       "steep ridges and valleys cross the land.|rocky slopes rise into high peaks."),
    "overpass": _words("an overpass", "a flyover|a highway interchange",
                       "one road passes over another on a raised bridge.|ramps curve between the crossing roads."),
    "park": _words("a park", "a city park|public gardens",
                   "paths wind through lawns and trees.|a green space with trees in the middle of town."),
    "parking": _words("a parking lot", "a car park|parked cars",
                      "many cars are parked in rows.|a paved lot is filled with parked vehicles."),
    "parkinglot": _words("a parking lot", "a car park|parked cars",
                         "many cars are parked in rows.|a paved lot is filled with parked vehicles."),
    "playground": _words("a playground", "a sports ground|a running track with a field",
                         "a running track circles a green sports field.|a school sports ground with courts."),
    "pond": _words("a pond", "a small lake|a pool of water",
                   "a small body of still water is surrounded by land.|the pond is fringed by grass and trees."),
    "port": _words("a port", "a harbour with ships|docks and piers",
                   "ships are berthed along the docks.|piers reach out into the water."),
    "railwaystation": _words("a railway station", "a train station|rail tracks and platforms",
                             "many rail tracks run side by side into a station.|trains stand at long platforms."),
    "resort": _words("a resort", "a holiday resort|a hotel with pools",
                     "hotel buildings surround swimming pools and gardens.|a leisure complex with pools near the coast."),
    "river": _words("a river", "a stream|a winding waterway",
                    "a river winds through the land.|water flows between two green banks."),
    "runway": _words("a runway", "an airstrip|a landing strip",
                     "a long straight strip of tarmac with markings.|the runway is painted with white lines."),
    "school": _words("a school", "a school campus|school buildings with a yard",
                     "school buildings stand next to a sports field.|a campus with classrooms and playgrounds."),
    "sparseresidential": _words("a sparse residential area", "scattered houses|a rural neighbourhood",
                                "a few houses are scattered among fields and trees.|homes stand far apart."),
    "square": _words("a square", "a town square|a public plaza",
                     "an open paved plaza is surrounded by buildings.|a wide square lies in the middle of the town."),
    "stadium": _words("a stadium", "a sports arena|a football stadium",
                      "stands of seats ring a playing field.|an oval arena surrounds the pitch."),
    "storagetanks": _words("storage tanks", "oil tanks|round silos",
                           "several round white tanks stand together.|circular storage tanks fill the site."),
    "tenniscourt": _words("a tennis court", "tennis courts|a sports court with a net",
                          "rectangular courts with white lines and nets.|tennis courts stand next to each other."),
    "viaduct": _words("a viaduct", "an elevated road|a long raised bridge",
                      "a raised road on pillars crosses the land.|an elevated highway curves across the scene."),
}

# Words beyond the lexicon's that run-together names are split into (``baseballcourt``, ``solarpanel``).
_EXTRA_WORDS = ("area basketball bay building car church circular cloud container court crossroad crossroads dam "
                "farm field ground harbour highway home house ice industrial island lake land lot mobile oil palace "
                "panel parking plant power rail railway rectangular residential road roundabout sea ship snow solar "
                "sports station tank terrace thermal track train wetland yard")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def class_key(label: str) -> str:
    """What makes two class names one class: letters and digits only, lower-cased (``Dense_Residential`` and
    ``denseresidential`` are the same class)."""
    return re.sub(r"[^0-9a-z]", "", label.lower())


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    words = set(_EXTRA_WORDS.split())
    for scene in LEXICON.values():
        for phrase in scene.phrases:
            words.update(re.findall(r"[a-z]+", phrase.lower()))
    return frozenset(word for word in words if len(word) > 1)


def _segment(token: str) -> list[str]:
    """Split a run-together lower-case word into vocabulary words (fewest pieces), else keep it whole."""
    vocabulary = _vocabulary()
    best: list[list[str] | None] = [[]] + [None] * len(token)
    for end in range(1, len(token) + 1):
        for start in range(end):
            head = best[start]
            piece = token[start:end]
            known = piece in vocabulary or piece.endswith("s") and piece[:-1] in vocabulary
            if head is not None and known:
                if best[end] is None or len(head) + 1 < len(best[end]):
                    best[end] = head + [piece]
    return best[-1] if best[-1] else [token]


def readable_words(label: str) -> str:
    """``DenseResidential`` → "dense residential", ``golfcourse`` → "golf course", ``storage_tanks`` →
    "storage tanks": the name as plain lower-case words (no article)."""
    parts = re.split(r"[\s_\-]+", _CAMEL.sub(" ", label.strip()))
    words: list[str] = []
    for part in filter(None, parts):
        lowered = part.lower()
        words += _segment(lowered) if lowered.isalpha() else [lowered]
    return " ".join(words) or label


def scene_words(label: str) -> SceneWords:
    """The lexicon's words for this class, or a noun phrase built from the name itself."""
    known = LEXICON.get(class_key(label))
    if known is not None:
        return known
    return SceneWords(with_article(readable_words(label)))


def with_article(words: str) -> str:
    """"airport" → "an airport"; plurals ("storage tanks") and phrases that have an article keep none."""
    first = words.split(" ", 1)[0]
    if first in ("a", "an", "the") or words.endswith("s") and not words.endswith("ss"):
        return words
    return ("an " if words[:1] in "aeiou" else "a ") + words
