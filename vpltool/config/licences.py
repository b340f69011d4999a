"""What a user may ship: the licence of the code each method follows and of the weights it loads (torch-free).

Every ``--dense`` method (its spec row's ``licence``), text-supervised family (its
:class:`~vpltool.models.registry.TextFamilyRow`'s) and model family (:func:`vpltool.models.register_family`'s
``licence=``) declares one :class:`Licence` where it registers; a plugin declares its own
(``vpltool.plugins.Licence``). ``vpltool list-methods --licences``, :func:`vpltool.list_methods` ``(licences=True)``
and docs/licences.md (``docgen/licences_page.py``) print them.

The facts below were read at each reference repository's root, at the commit named: the file ``LICENSE`` (or
``LICENSE.md``, ``COPYING``) and its first lines; "none" where the root has no such file, which leaves the code's
terms unknown (all rights reserved by default). A weights licence is the one its release names; ``unknown`` where
the release names none. Nothing here is legal advice: the licence files themselves govern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_COMMIT = re.compile(r"[0-9a-f]{7,40}")
# the words that mark a licence that forbids commercial use or is its owner's own (what a user must read first)
_FLAGS = ("non-commercial", "nc-", "-nc", "sam license", "dinov3 license", "open model license", "none:", "unknown")


@dataclass(frozen=True)
class Licence:
    """The licences of one method or family.

    Args:
        code: the licence of the code it follows, as its reference repository's root file names it
            (``"MIT"``, ``"Apache-2.0"``, ``"NVIDIA Source Code License (non-commercial)"``), or ``"none: no licence
            file, at commit X"`` (:func:`no_licence_file`); ``"MIT (vpltool's own)"`` for code of vpltool's alone.
        weights: the licence of the weights it loads by default (``"SAM License"``, ``"Apache-2.0"``,
            ``"CC-BY-NC-4.0"``, ``"unknown"``); several as ``"OpenAI CLIP ViT-B/16: MIT; DINO ViT-B/8: Apache-2.0"``.
        repo: the reference repository, ``owner/name`` on GitHub; ``""`` for code of vpltool's alone.
        commit: the commit whose root was read (7 to 40 hex digits); ``""`` with no ``repo``.
        note: anything else a user should know (a vendored tree under another licence, a pinned commit).
    """

    code: str
    weights: str
    repo: str = ""
    commit: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        from ..errors import VplError

        if not (isinstance(self.code, str) and self.code.strip() and isinstance(self.weights, str)
                and self.weights.strip()):
            raise VplError("a Licence names its code's licence and its weights' (\"unknown\" when none is known)")
        if self.repo and (self.repo.count("/") != 1 or not _COMMIT.fullmatch(self.commit)):
            raise VplError(f"Licence of {self.repo!r}: give the repository as owner/name and the commit read "
                           "(7 to 40 hex digits)")

    @property
    def flagged(self) -> bool:
        """Whether its code or weights need reading before shipping: no licence file, unknown, non-commercial or
        the owner's own terms (SAM License, DINOv3 License, NVIDIA's)."""
        words = f"{self.code} {self.weights}".lower()
        return any(flag in words for flag in _FLAGS)

    def row(self) -> dict[str, str]:
        """Its fields as a JSON-ready dict (``repo`` as ``owner/name@commit``)."""
        return {"code": self.code, "weights": self.weights,
                "repo": f"{self.repo}@{self.commit}" if self.repo else "vpltool", "note": self.note}


def no_licence_file(commit: str) -> str:
    """The code licence of a repository whose root has no licence file at ``commit``."""
    return f"none: no licence file, at commit {commit[:7]}"


def checked(licence: object, name: str) -> Licence | None:
    """A plugin's declared ``licence`` for ``name``, if it is a :class:`Licence` (None: undeclared, listed as such);
    anything else is one line."""
    from ..errors import VplError

    if licence is not None and not isinstance(licence, Licence):
        raise VplError(f"{name}: licence= takes a vpltool.plugins.Licence, not a {type(licence).__name__}")
    return licence


UNDECLARED = "undeclared"  # a plugin's method or family that declares no Licence: what the listing prints


def licence_lines(name: str, licence: Licence | None) -> list[str]:
    """What ``vpltool list-methods --licences`` prints of ``name``: its name (with ``[read first]`` when
    :attr:`Licence.flagged`), then its code's licence and reference, its weights' and its note, indented."""
    if licence is None:
        return [f"{name}  [read first]", f"  code: {UNDECLARED} (a plugin that declares no Licence)",
                f"  weights: {UNDECLARED}"]
    where = f" ({licence.repo}@{licence.commit[:7]})" if licence.repo else ""
    lines = [f"{name}{'  [read first]' if licence.flagged else ''}", f"  code: {licence.code}{where}",
             f"  weights: {licence.weights}"]
    return lines + ([f"  note: {licence.note}"] if licence.note else [])


# the weights most methods load by default (--model ViT-B-16: OpenAI's, through open_clip; the proxies timm's DINO)
_CLIP = "OpenAI CLIP ViT-B/16: MIT"
_DINO_B8 = "DINO ViT-B/8 (facebookresearch/dino): Apache-2.0"
_DINO_B16 = "DINO ViT-B/16 (facebookresearch/dino): Apache-2.0"
_SAM_VIT_B = "SAM ViT-B (segment-anything): Apache-2.0"
_SAM2 = "SAM 2 region masks, if given: Apache-2.0"
_SAM3_WEIGHTS = "SAM License (Meta's own, facebook/sam3)"
_NO_FILE = "the root has no licence file, so the code's terms are unknown; ask its authors before shipping"

# the reference repositories, read at the commits named (git ls-tree at the root, then the file's first lines)
CLEARCLIP = Licence(no_licence_file("ad68a404d55d48d27330b93554eb64a234ff717f"), _CLIP, "mc-lan/ClearCLIP",
                    "ad68a404d55d48d27330b93554eb64a234ff717f", _NO_FILE)
NONE = Licence("MIT", _CLIP, "openai/CLIP", "d05afc436d78f1c48dc0dbf8e5980a9d471f35f6",
               "CLIP's own block, run in ClearCLIP's harness (mc-lan/ClearCLIP: no licence file)")
MASKCLIP = Licence("Apache-2.0", _CLIP, "chongzhou96/MaskCLIP", "245d31f809be9c1938f8f30561b6bf9ed033d746",
                   "run as ClearCLIP's harness runs it (mc-lan/ClearCLIP: no licence file)")
SCLIP = Licence(no_licence_file("b56bd3014b9e8a3ee3450bcfc53700a67d627b7a"), _CLIP, "wangf3014/SCLIP",
                "b56bd3014b9e8a3ee3450bcfc53700a67d627b7a", _NO_FILE)
NACLIP = Licence("MIT", _CLIP, "sinahmr/NACLIP", "0cac3a651f753b11315ea799cfbfabf79da1bd76")
SC_CLIP = Licence(no_licence_file("0417ba92851e9dd7432d608f10a0804d01a23062"), _CLIP, "SuleBai/SC-CLIP",
                  "0417ba92851e9dd7432d608f10a0804d01a23062", _NO_FILE)
PROXYCLIP = Licence(no_licence_file("e7b767fbc58ea218a3b8ba34cd92db521cc5f2e1"), f"{_CLIP}; {_DINO_B8}",
                    "mc-lan/ProxyCLIP", "e7b767fbc58ea218a3b8ba34cd92db521cc5f2e1", _NO_FILE)
CASS = Licence(no_licence_file("228ecdd8273e269d1b955f5ad7f9558346036e22"), f"{_CLIP}; {_DINO_B8}",
               "MICV-yonsei/CASS", "228ecdd8273e269d1b955f5ad7f9558346036e22", _NO_FILE)
TRIDENT = Licence("Apache-2.0", f"{_CLIP}; {_DINO_B16}; {_SAM_VIT_B}", "YuHengsss/Trident",
                  "a93b346d1b1dc55bc6f547da5b7d361ad449ae44")
CORRCLIP = Licence(no_licence_file("103bc18213e6d906e55a21b8491bc7b04cbf106b"), f"{_CLIP}; {_DINO_B8}; {_SAM2}",
                   "zdk258/CorrCLIP", "103bc18213e6d906e55a21b8491bc7b04cbf106b",
                   f"{_NO_FILE}; CorrCLIPv2's sub-folders carry their own (CropFormer, EoMT, DINOv3, PE)")
OV_STITCHER = Licence("MIT", f"{_CLIP}; {_DINO_B8}; {_SAM2}", "atw617/OV-Stitcher",
                      "270b85a2f3eea3a95cce6be6989995fca38e685f",
                      "LICENSE added at a7d24ec (2026-04-02); vpltool follows the code of 91a9489, of the history "
                      "before a rewrite, whose root held a file 'MIT LICENSE' (a stored index's copy, at 113bd71)")
TEXTREGION = Licence("MIT", f"{_CLIP}; {_SAM2}", "avaxiao/TextRegion", "e392cd292ea34d7cf419789bf16df7d3590b639b")
RADSEG = Licence("MIT", "C-RADIOv3-B: NVIDIA Open Model License; SigLIP 2 text tower: Apache-2.0",
                 "RADSeg-OVSS/RADSeg", "05ec86fcc164ade687f8dce36f69e22278679803",
                 "C-RADIO weights: the NVIDIA Open Model License (NVlabs/RADIO@c0f3701 README; commercial use "
                 "allowed); RADIO's own code: the NVIDIA Source Code License (non-commercial)")
ACTIVESAM = Licence("MIT", _SAM3_WEIGHTS, "VILA-Lab/ActiveSAM", "41cad43aa340d15876d2dcf1eeda92355fc21695",
                    "its vendored sam3/ tree and SAM 3 itself fall under Meta's SAM License "
                    "(facebookresearch/sam3@99d02f2)")
SAM3_METHOD = Licence("MIT", _SAM3_WEIGHTS, "VILA-Lab/ActiveSAM", "41cad43aa340d15876d2dcf1eeda92355fc21695",
                      "ActiveSAM's FrozenSAM3Segmentor; SAM 3's code and weights: Meta's SAM License "
                      "(facebookresearch/sam3@99d02f2)")

# the text-supervised families
PGSEG = Licence(no_licence_file("9f167cd9de614e42340c22888650719579df3474"),
                "your train-text checkpoint: yours; a PGSeg release: unknown; a GroupViT release: NVIDIA Source Code "
                "License (non-commercial)", "Ferenas/PGSeg", "9f167cd9de614e42340c22888650719579df3474",
                f"{_NO_FILE}; it builds on NVlabs/GroupViT@13b7861, under the NVIDIA Source Code License for "
                "GroupViT (non-commercial)")
TALK2DINO = Licence(no_licence_file("4918c2df1d00c644ecc7f34de070694af1a8bc69"),
                    "your train-text checkpoint: yours; a Talk2DINO release: unknown; DINOv2: Apache-2.0; "
                    f"{_CLIP}", "lorebianchi98/Talk2DINO", "4918c2df1d00c644ecc7f34de070694af1a8bc69", _NO_FILE)

# the model families (each file a family reads: the release's licence)
CLIP_FAMILY = Licence("MIT", "OpenAI CLIP: MIT; MetaCLIP: CC-BY-NC-4.0; SigLIP 2: Apache-2.0; PE-Core: Apache-2.0; "
                      "the toy CLIP: MIT (vpltool's)", "mlfoundations/open_clip",
                      "89fb801f1e6087880e951fc8354b8a2077b79c6d",
                      "weights: openai/CLIP@d05afc4 MIT, facebookresearch/MetaCLIP@f47f784 CC-BY-NC-4.0, "
                      "google-research/big_vision@0127fb6 Apache-2.0, facebookresearch/perception_models@3e352cc "
                      "LICENSE.PE Apache-2.0")
DINO_FAMILY = Licence("Apache-2.0", "DINO, DINOv2: Apache-2.0; DINOv3: DINOv3 License (Meta's own); C-RADIOv3: "
                      "NVIDIA Open Model License; the toy DINO: MIT (vpltool's)", "huggingface/pytorch-image-models",
                      "aa4b5850c1543fa488abf260f18390eda46cf85d",
                      "weights: facebookresearch/dino@7c446df Apache-2.0, facebookresearch/dinov2@b8931f7 "
                      "Apache-2.0, facebookresearch/dinov3@6876159 LICENSE.md DINOv3 License, NVlabs/RADIO@c0f3701 "
                      "README (C-RADIO: NVIDIA Open Model License)")
SAM_FAMILY = Licence("Apache-2.0", "SAM ViT-B/L/H: Apache-2.0; the toy SAM: MIT (vpltool's)",
                     "facebookresearch/segment-anything", "dca509fe793f601edb92606367a655c15ac00fdf")
SAM3_FAMILY = Licence("SAM License", f"{_SAM3_WEIGHTS}; the toy SAM 3: MIT (vpltool's)",
                      "facebookresearch/sam3", "99d02f28c8d34610ab35559b72642b01f10fdb1e",
                      "vpltool runs SAM 3 through transformers' Sam3Model (Apache-2.0 code); the weights stay under "
                      "the SAM License")
DECODER_FAMILY = Licence("MIT (vpltool's own)", "your trained decoder: yours, under the terms of the CLIP it was "
                         "trained on", note="follows VPL (AAAI'25: no public repository found) and, with --recipe "
                         "weclip, zbf1991/WeCLIP@0f47db4 (no licence file)")

# the stages that follow a paper's code (no registry: one command each), for docs/licences.md
STAGES = {
    "cam, crf": Licence("MIT", "the CLIP it runs (--model)", "linyq2117/CLIP-ES",
                        "3893f817be359c5ee1dbf8111cad381a532c7acc",
                        "CLIP-ES's GradCAM, class-aware attention affinity and dense CRF"),
    "learn-prototypes, train-decoder, predict": DECODER_FAMILY,
    "train-decoder --recipe weclip / weclip+": Licence(
        no_licence_file("0f47db46b5a59ff3bd9293a6e357382ca6490399"), "the CLIP (and DINO) it runs; your decoder: yours",
        "zbf1991/WeCLIP", "0f47db46b5a59ff3bd9293a6e357382ca6490399", _NO_FILE),
    "sam-pseudo --masks sam": Licence(no_licence_file("4885dde4cdd98c209a27fd34a21d547710f7720d"), _SAM_VIT_B.replace(
        "ViT-B", "ViT-H"), "cskyl/SAM_WSSS", "4885dde4cdd98c209a27fd34a21d547710f7720d", _NO_FILE),
    "sam-pseudo --masks sam3": Licence(no_licence_file("4885dde4cdd98c209a27fd34a21d547710f7720d"), _SAM3_WEIGHTS,
                                       "cskyl/SAM_WSSS", "4885dde4cdd98c209a27fd34a21d547710f7720d",
                                       f"{_NO_FILE}; SAM 3's weights: Meta's SAM License"),
}


__all__ = ["Licence", "STAGES", "UNDECLARED", "checked", "licence_lines", "no_licence_file"]
