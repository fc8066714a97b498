"""The official EDVR models that `vs-iedvr fetch NAME` installs: where their authors publish each
checkpoint, how to check it, its layout and its published scores; and where fetched models live.

    entry = model_zoo.find("edvr-m")       # Official, or None for a name that is no official model
    model_zoo.installed_path("edvr-m")     # Path of the model file `fetch` writes
    model_zoo.models_folder()              # $IEDVR_MODEL_DIR, else $XDG_DATA_HOME/vs-iedvr/models

Only data and paths here: `vs-iedvr fetch --list` and the filter's messages need no torch.

Sources:
- BasicSR (XPixelGroup/BasicSR): the Google Drive file ids are those of
  scripts/download_pretrained_models.py (its 'EDVR' entry); the scores those of docs/ModelZoo.md
  ("Video Super-Resolution", EDVR), tested by BasicSR's options/test/EDVR/*.yml.
- OpenMMLab mmagic (open-mmlab/mmagic): the URLs and REDS4 scores of configs/edvr/metafile.yml
  (the same in configs/edvr/README.md); its EDVR-M and EDVR-L are the same networks, trained again
  by OpenMMLab, under mmagic's key names (edvr_checkpoint.basicsr_state_from_mmagic converts them).
- The file names end in the first 8 hex digits of the file's SHA-256 (torch.hub's convention;
  OpenMMLab's publish_model.py names its files the same way). The whole SHA-256 is known for the two
  EDVR-M files: cccv (EutropicAI/cccv, cccv/config/vsr/edvr_config.py) publishes it for the same
  files (its hashes begin with BasicSR's prefixes). For the others `fetch` checks the prefix: 32
  bits, enough against a damaged or wrong file, not against a forged one.
- The EDVR paper (Wang et al., CVPR workshops 2019, arXiv:1905.02716) reports Vid4 scores for
  EDVR-M and EDVR-L trained on Vimeo-90K; only EDVR-L's Vimeo-90K model was released, so the
  REDS-trained EDVR-M below has no Vid4 score of its own.
"""

import os
from dataclasses import dataclass
from pathlib import Path

FOLDER_VARIABLE = "IEDVR_MODEL_DIR"


@dataclass(frozen=True)
class Score:
    benchmark: str   # "REDS4 (RGB)", "Vid4 (Y)"
    psnr_ssim: str   # "30.53 / 0.8699", as published
    source: str      # where the figure is published


@dataclass(frozen=True)
class Official:
    name: str                    # the short name: `vs-iedvr fetch NAME`, Upscale(model=NAME)
    file_name: str               # the publisher's file name, its SHA-256 prefix at the end
    urls: tuple[str, ...]        # tried in order; Google Drive's answer is followed to the file
    sha256: str                  # the whole digest, or the published prefix (8 hex digits)
    key_layout: str              # "basicsr" or "mmagic": the names of the checkpoint's weights
    layout: str                  # what the network is
    use_for: str                 # which source it suits
    scores: tuple[Score, ...]
    publisher: str


def google_drive(file_id: str) -> str:
    return f"https://drive.google.com/uc?export=download&id={file_id}"


def openmmlab(file_name: str) -> str:
    return f"https://download.openmmlab.com/mmediting/restorers/edvr/{file_name}"


BASICSR_ZOO = "BasicSR docs/ModelZoo.md"
MMAGIC_ZOO = "mmagic configs/edvr/metafile.yml"
BASICSR = "BasicSR (EDVR's authors)"
MMAGIC = "OpenMMLab mmagic"

MODELS: tuple[Official, ...] = (
    Official("edvr-m", "EDVR_M_x4_SR_REDS_official-32075921.pth",
             (google_drive("1dd6aFj-5w2v08VJTq5mS9OFsD-wALYD6"),),
             "32075921635eb07d56c83ec4009341bd82d882900ca7043f9c51cc7951033efd", "basicsr",
             "EDVR-M x4: 64 features, 5 frames, TSA, 10 reconstruction blocks",
             "clean sources, fast",
             (Score("REDS4 (RGB)", "30.53 / 0.8699", BASICSR_ZOO),), BASICSR),
    Official("edvr-m-notsa", "EDVR_M_woTSA_x4_SR_REDS_official-1edf645c.pth",
             (google_drive("1C_WdN-NyNj-P7SOB5xIVuHl4EBOwd-Ny"),),
             "1edf645c117ba34ea1c7fcf5506079cf9dd361c2bd26b6f3cad9197a0ba7adbf", "basicsr",
             "EDVR-M x4 with a 1x1 fusion convolution instead of TSA",
             "clean sources, the fastest", (), BASICSR),
    Official("edvr-l", "EDVR_L_x4_SR_REDS_official-9f5f5039.pth",
             (google_drive("127KXEjlCwfoPC1aXyDkluNwr9elwyHNb"),), "9f5f5039", "basicsr",
             "EDVR-L x4: 128 features, 5 frames, TSA, 40 reconstruction blocks",
             "clean sources",
             (Score("REDS4 (RGB)", "31.09 / 0.8800", BASICSR_ZOO),), BASICSR),
    Official("edvr-l-vimeo", "EDVR_L_x4_SR_Vimeo90K_official-162b54e4.pth",
             (google_drive("1aVR3lkX6ItCphNLcT7F5bbbC484h4Qqy"),), "162b54e4", "basicsr",
             "EDVR-L x4 trained on Vimeo-90K, 7 frames",
             "clean sources: the best published picture",
             (Score("Vid4 (Y)", "27.35 / 0.8264", BASICSR_ZOO + "; the EDVR paper"),
              Score("Vid4 (RGB)", "25.83 / 0.8077", BASICSR_ZOO)), BASICSR),
    Official("edvr-l-blur", "EDVR_L_x4_SRblur_REDS_official-983d7b8e.pth",
             (google_drive("1GZz_87ybR8eAAY3X2HWwI3L6ny7-5Yvl"),), "983d7b8e", "basicsr",
             "EDVR-L x4 with the pre-deblurring module",
             "blurred low-resolution sources",
             (Score("REDS4 SRblur (RGB)", "28.88 / 0.8361", BASICSR_ZOO),), BASICSR),
    Official("edvr-l-deblur", "EDVR_L_deblur_REDS_official-ca46bd8c.pth",
             (google_drive("1_ma2tgHscZtkIY2tEJkVdU-UP8bnqBRE"),), "ca46bd8c", "basicsr",
             "EDVR-L x1 (hr_in): deblurs at the input's size",
             "blurred sources, kept at their size",
             (Score("REDS4 deblur (RGB)", "34.80 / 0.9487", BASICSR_ZOO),), BASICSR),
    Official("edvr-l-deblurcomp", "EDVR_L_deblurcomp_REDS_official-0e988e5c.pth",
             (google_drive("1fEoSeLFnHSBbIs95Au2W197p8e4ws4DW"),), "0e988e5c", "basicsr",
             "EDVR-L x1 (hr_in): deblurs and removes compression artefacts at the input's size",
             "blurred and compressed sources, kept at their size",
             (Score("REDS4 deblurcomp (RGB)", "30.24 / 0.8567", BASICSR_ZOO),), BASICSR),
    Official("edvr-m-mmagic", "edvrm_x4_8x4_600k_reds_20210625-e29b71b5.pth",
             (openmmlab("edvrm_x4_8x4_600k_reds_20210625-e29b71b5.pth"),), "e29b71b5", "mmagic",
             "EDVR-M x4 with TSA, trained by OpenMMLab", "clean sources, fast",
             (Score("REDS4 (RGB)", "30.4194 / 0.8684", MMAGIC_ZOO),), MMAGIC),
    Official("edvr-m-notsa-mmagic", "edvrm_wotsa_x4_8x4_600k_reds_20200522-0570e567.pth",
             (openmmlab("edvrm_wotsa_x4_8x4_600k_reds_20200522-0570e567.pth"),), "0570e567",
             "mmagic", "EDVR-M x4 without TSA, trained by OpenMMLab", "clean sources, the fastest",
             (Score("REDS4 (RGB)", "30.3430 / 0.8664", MMAGIC_ZOO),), MMAGIC),
    Official("edvr-l-mmagic", "edvrl_c128b40_8x8_lr2e-4_600k_reds4_20220104-4509865f.pth",
             (openmmlab("edvrl_c128b40_8x8_lr2e-4_600k_reds4_20220104-4509865f.pth"),),
             "4509865f", "mmagic", "EDVR-L x4 with TSA, trained by OpenMMLab", "clean sources",
             (Score("REDS4 (RGB)", "31.0467 / 0.8793", MMAGIC_ZOO),), MMAGIC),
    Official("edvr-l-notsa-mmagic", "edvrl_wotsa_c128b40_8x8_lr2e-4_600k_reds4_20211228-d895a769.pth",
             (openmmlab("edvrl_wotsa_c128b40_8x8_lr2e-4_600k_reds4_20211228-d895a769.pth"),),
             "d895a769", "mmagic", "EDVR-L x4 without TSA, trained by OpenMMLab", "clean sources",
             (Score("REDS4 (RGB)", "31.0010 / 0.8784", MMAGIC_ZOO),), MMAGIC),
)


def names() -> list[str]:
    return [entry.name for entry in MODELS]


def find(name: str) -> Official | None:
    """The official model of a short name ("edvr-m", also "edvr-m.pt"), or None."""
    bare = name[:-3] if name.endswith(".pt") else name
    return next((entry for entry in MODELS if entry.name == bare), None)


def models_folder() -> Path:
    """Where fetched models are installed: $IEDVR_MODEL_DIR, else $XDG_DATA_HOME/vs-iedvr/models
    (~/.local/share/vs-iedvr/models). Not the package's folder, which is read-only in many
    installs; the filter looks in the same place (csrc/vsfilter/vs_filter.cpp)."""
    chosen = os.environ.get(FOLDER_VARIABLE)
    if chosen:
        return Path(chosen)
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "vs-iedvr" / "models"


def installed_path(name: str) -> Path:
    return models_folder() / f"{find(name).name if find(name) else name}.pt"


def fetch_command(name: str) -> str:
    return f"vs-iedvr fetch {name}"


def describe_scores(entry: Official) -> str:
    if not entry.scores:
        return "no published score"
    return "; ".join(f"{score.benchmark} {score.psnr_ssim} ({score.source})"
                     for score in entry.scores)
