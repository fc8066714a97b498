"""The default data's lists: the held-out clips stay apart from everything trained on (no file,
no other cut or encoding of the same footage, no photograph from a held-out clip's folder), and
every source names its licence. Checked on the lists themselves: no download needed."""

import fnmatch
from pathlib import PurePosixPath

from vs_iedvr.training.default_data import PHOTOS, TEXTURES, VIDEOS

HELD_OUT = [v for v in VIDEOS if v.split == "held_out"]
TRAINED = ([(v.package, v.path) for v in VIDEOS if v.split == "train"]
           + [(t.package, t.path) for t in TEXTURES])


def footage(path: str) -> str:
    """The footage a file holds, whatever its cut or quality: carphone_pristine.mp4 and
    carphone_distorted.mp4 are one footage."""
    stem = PurePosixPath(path).stem.lower()
    for suffix in ("_pristine", "_distorted"):
        stem = stem.removesuffix(suffix)
    return stem


def test_splits_are_train_or_held_out_with_unique_names():
    assert {v.split for v in VIDEOS} == {"train", "held_out"}
    for split in ("train", "held_out"):
        names = [v.name for v in VIDEOS if v.split == split]
        assert len(names) == len(set(names))
    assert len(HELD_OUT) >= 5


def test_nothing_trained_on_comes_from_the_held_out_footage():
    for clip in HELD_OUT:
        key, folder = footage(clip.path), str(PurePosixPath(clip.path).parent)
        for package, path in TRAINED:
            assert (package, path) != (clip.package, clip.path)
            assert footage(path) != key, f"{package}:{path} is {clip.name}'s footage"
        for source in PHOTOS:
            if source.package != clip.package:
                continue
            for pattern in source.include or ("*",):
                assert not fnmatch.fnmatchcase(clip.path, pattern), (source.package, pattern)
                # Nothing from the held-out clip's own folder (the dog clip's dogs).
                assert not pattern.startswith(folder + "/"), (source.package, pattern)


def test_every_source_names_its_licence():
    for source in [*PHOTOS, *VIDEOS, *TEXTURES]:
        assert source.licence.strip(), source
