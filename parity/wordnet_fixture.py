"""A small WordNet in the format nltk's ``WordNetCorpusReader`` reads (``nltk_data/corpora/wordnet/``: ``lexnames``,
``index.*``, an empty ``index.sense``, ``data.*`` whose synset offsets are the lines' byte offsets, ``*.exc``),
written from a table of noun senses: what ActiveSAM's hypernym tokens read, the same files for its own code and for
vpltool (its parity runner and the tests), where WordNet's own data cannot be downloaded. Imports nothing from vpltool.

    python parity/wordnet_fixture.py OUT_DIR        # writes OUT_DIR/corpora/wordnet; NLTK_DATA=OUT_DIR reads it
"""

from __future__ import annotations

import sys
from pathlib import Path

# noun senses: (lemmas, hypernym keys in order); a key is the sense's first lemma. The first sense of a lemma is the
# first row that lists it. A few facts of WordNet 3.0's noun hierarchy, trimmed: enough for the tests' and the
# parity photos' class names to have two, one or no hypernyms.
NOUNS = [
    (("entity",), ()),
    (("organism", "being"), ("entity",)),
    (("causal_agent", "cause"), ("entity",)),
    (("animal", "animate_being", "beast"), ("organism",)),
    (("vertebrate", "craniate"), ("animal",)),
    (("mammal",), ("vertebrate",)),
    (("carnivore",), ("mammal",)),
    (("feline", "felid"), ("carnivore",)),
    (("canine", "canid"), ("carnivore",)),
    (("domestic_animal", "domesticated_animal"), ("animal",)),
    (("cat", "true_cat"), ("feline",)),
    (("dog", "domestic_dog", "Canis_familiaris"), ("canine", "domestic_animal")),
    (("person", "individual", "someone"), ("organism", "causal_agent")),
    (("bird",), ("vertebrate",)),
    (("equine", "equid"), ("mammal",)),
    (("odd-toed_ungulate", "perissodactyl"), ("mammal",)),
    (("horse", "Equus_caballus"), ("equine", "odd-toed_ungulate")),
    (("artifact", "artefact"), ("entity",)),
    (("conveyance", "transport"), ("artifact",)),
    (("vehicle",), ("conveyance",)),
    (("craft",), ("vehicle",)),
    (("heavier-than-air_craft",), ("craft",)),
    (("airplane", "aeroplane", "plane"), ("heavier-than-air_craft",)),
    (("motor_vehicle", "automotive_vehicle"), ("vehicle",)),
    (("car", "auto", "automobile"), ("motor_vehicle",)),
    (("motorcycle", "bike"), ("motor_vehicle",)),
    (("public_transport",), ("conveyance",)),
    (("bus", "autobus", "coach"), ("public_transport",)),
    (("rocket", "projectile"), ("vehicle",)),
    (("container",), ("artifact",)),
    (("vessel",), ("container",)),
    (("bottle",), ("vessel",)),
    (("cup",), ("container",)),
    (("beverage", "drink"), ("entity",)),
    (("coffee", "java"), ("beverage",)),
    (("furniture", "piece_of_furniture"), ("artifact",)),
    (("chair",), ("furniture",)),
    (("sofa", "couch", "lounge"), ("furniture",)),
    (("table",), ("furniture",)),
    (("plant", "flora"), ("organism",)),
    (("pot_plant",), ("plant",)),
]
LEXNAMES = ["adj.all\t3", "adj.pert\t3", "adv.all\t4", "noun.Tops\t1"]
HEADER = "  1 This is a small WordNet in nltk's format, written for tests; its senses are a few of WordNet 3.0's.\n"


def write(root: Path) -> Path:
    """Write the corpus under ``root/corpora/wordnet`` (what ``NLTK_DATA=root`` finds); returns its folder."""
    folder = Path(root) / "corpora" / "wordnet"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lexnames").write_text("".join(f"{i:02d}\t{row}\n" for i, row in enumerate(LEXNAMES)))
    for pos in ("noun", "verb", "adj", "adv"):
        (folder / f"{pos}.exc").write_text("")
        if pos != "noun":
            (folder / f"index.{pos}").write_text(HEADER)
            (folder / f"data.{pos}").write_text(HEADER)
    keys = [lemmas[0] for lemmas, _ in NOUNS]
    hyponyms: dict[str, list[str]] = {k: [] for k in keys}
    for lemmas, parents in NOUNS:
        for p in parents:
            hyponyms[p].append(lemmas[0])

    def line(i: int, offsets: dict[str, int]) -> str:
        lemmas, parents = NOUNS[i]
        words = " ".join(f"{w} 0" for w in lemmas)
        ptrs = [f"@ {offsets[p]:08d} n 0000" for p in parents] + [f"~ {offsets[c]:08d} n 0000"
                                                                   for c in hyponyms[lemmas[0]]]
        return (f"{offsets[lemmas[0]]:08d} 03 n {len(lemmas):02x} {words} {len(ptrs):03d} {' '.join(ptrs)}"
                f"{' ' if ptrs else ''}| a test sense of {lemmas[0].replace('_', ' ')}\n")

    offsets = {k: 0 for k in keys}
    for _ in range(3):  # a line's length depends on the offsets it names: settle them (fixed 8-digit fields)
        pos = len(HEADER.encode())
        new = {}
        for i, k in enumerate(keys):
            new[k] = pos
            pos += len(line(i, offsets).encode())
        offsets = new
    data = HEADER + "".join(line(i, offsets) for i in range(len(NOUNS)))
    (folder / "data.noun").write_text(data)
    index: dict[str, list[str]] = {}
    for lemmas, _ in NOUNS:
        for w in lemmas:
            index.setdefault(w.lower(), []).append(lemmas[0])
    rows = []
    for lemma in sorted(index):
        senses = index[lemma]
        symbols = sorted({s for k in senses for s in (["@"] if NOUNS[keys.index(k)][1] else [])
                          + (["~"] if hyponyms[k] else [])})
        rows.append(f"{lemma} n {len(senses)} {len(symbols)} {' '.join(symbols)}{' ' if symbols else ''}"
                    f"{len(senses)} 0 {' '.join(f'{offsets[k]:08d}' for k in senses)}  \n")
    (folder / "index.noun").write_text(HEADER + "".join(rows))
    (folder / "index.sense").write_text("")  # no sense keys (nltk maps them across WordNet versions)
    (folder / "LICENSE").write_text("Written for tests from a few facts of WordNet 3.0 (Princeton University).\n")
    return folder


if __name__ == "__main__":
    print(write(Path(sys.argv[1])))
