"""`vs-iedvr fetch` against a web server on 127.0.0.1 (tests/fetch_server.py) that serves
checkpoints made by BasicSR's own EDVR (tests/basicsr_oracle.py) and by mmagic's own EDVRNet
(tests/mmagic_oracle.py), named with their true SHA-256 prefix as the official files are. The
official table's entries are kept (their Google Drive ids and paths, reached through
IEDVR_FETCH_MIRROR), with the test files' names and hashes in place of the official ones."""

import dataclasses
import hashlib
import io
import re

import numpy as np
import pytest
import torch
import vapoursynth as vs

import vs_iedvr
from basicsr_oracle import basicsr_edvr
from fetch_server import FileServer
from test_plugin import clip_of, planes
from vs_iedvr import download, model_file, model_zoo, weights_file
from vs_iedvr.window import fold

core = vs.core
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # BasicSR's LooseVersion

SMALL = dict(num_feat=16, deformable_groups=4, num_extract_block=2, num_reconstruct_block=2)
LENGTH, HEIGHT, WIDTH = 6, 32, 48
PROGRESS = re.compile(r"edvr-m: [0-9.]+ of [0-9.]+ MB \(\d+%\)")


def random_offsets(network: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded weights; the offset convolutions (zero at the start) drawn so that the offsets are
    several pixels, as in tests/test_edvr_layouts.py."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            parameter.normal_(0, 8.0 if "conv_offset.weight" in name else 0.05)
    return network.eval()


def saved(checkpoint) -> bytes:
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def official_like(name: str, data: bytes, whole_hash: bool = False) -> model_zoo.Official:
    """The table's entry of `name` for a test file: the file name ends in the file's SHA-256
    prefix, as the official names do."""
    entry = model_zoo.find(name)
    digest = hashlib.sha256(data).hexdigest()
    stem, suffix = entry.file_name.rsplit("-", 1)[0], ".pth"
    return dataclasses.replace(entry, file_name=f"{stem}-{digest[:8]}{suffix}",
                               sha256=digest if whole_hash else digest[:8])


def drive_id(entry: model_zoo.Official) -> str:
    return entry.urls[0].split("id=")[1]


def path_of(entry: model_zoo.Official) -> str:
    return "/" + entry.urls[0].split("/", 3)[3]


@pytest.fixture(scope="module")
def basicsr_model():
    network = random_offsets(basicsr_edvr().EDVR(**SMALL), seed=11)
    return network, saved({"params": network.state_dict()})


@pytest.fixture(scope="module")
def frames():
    return torch.rand(LENGTH, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))


@pytest.fixture
def server(monkeypatch, tmp_path, basicsr_model):
    """The server, with edvr-m (BasicSR's EDVR-M layout, small) on its Drive; the models folder
    a fresh one; the table's edvr-m that of the test file."""
    _, data = basicsr_model
    entry = official_like("edvr-m", data)
    table = tuple(entry if e.name == "edvr-m" else e for e in model_zoo.MODELS)
    monkeypatch.setattr(model_zoo, "MODELS", table)
    monkeypatch.setenv("IEDVR_MODEL_DIR", str(tmp_path / "models"))
    with FileServer() as files:
        files.drive[drive_id(entry)] = data
        monkeypatch.setenv("IEDVR_FETCH_MIRROR", files.url)
        yield files


def models_left(tmp_path) -> list[str]:
    """Every model file, or half-written one, in the models folder."""
    folder = tmp_path / "models"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.suffix in (".pt", ".partial"))


def eager_frames(network, frames, n, num_frame=5):
    radius = num_frame // 2
    window = [fold(n + k, 0, LENGTH - 1) for k in range(-radius, radius + 1)]
    with torch.no_grad():
        return network(frames[window][None].clone())[0].numpy()


def test_fetch_follows_drives_confirmation_and_upscale_finds_the_model_by_name(
        server, run_here, basicsr_model, frames, tmp_path):
    network, data = basicsr_model
    result = run_here("vs_iedvr", "fetch", "edvr-m")
    assert result.returncode == 0, result.stderr
    installed = tmp_path / "models" / "edvr-m.pt"
    assert f"installed edvr-m: {installed}" in result.stdout
    asked = [path.split("?")[0] for path, _ in server.requests]
    assert asked == ["/uc", "/download"]  # the page, then its form sent back with the token
    metadata = model_file.read_metadata(installed)
    assert metadata["weights"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert models_left(tmp_path) == ["edvr-m.pt"]  # the download is gone once installed

    out = core.iedvr.Upscale(clip_of(frames), model="edvr-m", fp16=0, device_index=-1)
    through_wrapper = vs_iedvr.upscale(clip_of(frames), model="edvr-m", fp16=0, device_index=-1)
    for n in (0, 2, LENGTH - 1):
        oracle = eager_frames(network, frames, n)
        np.testing.assert_allclose(planes(out.get_frame(n)), oracle, atol=1e-5, rtol=0)
        np.testing.assert_allclose(planes(through_wrapper.get_frame(n)), oracle, atol=1e-5, rtol=0)

    again = run_here("vs_iedvr", "fetch", "edvr-m")
    assert again.returncode == 0 and "edvr-m is installed" in again.stdout
    assert len(server.requests) == 2  # nothing downloaded again


def test_the_proxy_variables_are_honoured(server, run_here, monkeypatch, tmp_path):
    """With http_proxy set, every request goes to the proxy (here the test server, which answers
    a proxy's absolute URLs too), even for a host that does not resolve."""
    monkeypatch.setenv("IEDVR_FETCH_MIRROR", "http://models.invalid")
    monkeypatch.setenv("http_proxy", server.url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    result = run_here("vs_iedvr", "fetch", "edvr-m")
    assert result.returncode == 0, result.stderr
    assert server.requests[0][0].startswith("http://models.invalid/uc?")
    assert (tmp_path / "models" / "edvr-m.pt").is_file()


FAILURES = {
    # what the server does -> what the one line says
    "wrong-hash": "not the published SHA-256 prefix",
    "drop": "dropped after",
    "quota": "sent a web page (\"Google Drive - Quota exceeded\") instead of the file",
    "404": "answered 404",
    "stall": "no answer from 127.0.0.1",
    "stall-mid": "stopped sending after",
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_failed_download_is_one_line_and_leaves_no_model(failure, server, run_here, tmp_path,
                                                            basicsr_model):
    entry = model_zoo.find("edvr-m")
    if failure == "wrong-hash":
        server.drive[drive_id(entry)] = basicsr_model[1] + b"\0"  # a byte more
    elif failure == "404":
        del server.drive[drive_id(entry)]
    else:
        server.behaviour[drive_id(entry)] = failure
    result = run_here("vs_iedvr", "fetch", "edvr-m", "--timeout", "1")
    assert result.returncode == 1
    # One line besides the progress of a download that completed (and then failed its check).
    lines = [line for line in result.stderr.strip().splitlines() if not PROGRESS.fullmatch(line)]
    assert len(lines) == 1 and lines[0].startswith("error: edvr-m: "), result.stderr
    assert FAILURES[failure] in lines[0]
    assert models_left(tmp_path) == []
    if failure in ("drop", "stall-mid"):
        assert "run the command again to resume" in lines[0]


def test_the_older_drive_page_is_followed_by_its_confirm_link():
    """Drive's page before 2024 carried the token in a link (and a cookie) instead of a form."""
    page = ('<html><head><title>Google Drive - Virus scan warning</title></head><body>'
            '<a id="uc-download-link" href="/uc?export=download&amp;confirm=Xy9_&amp;id=ABC">'
            'Download anyway</a></body></html>')
    assert (download.confirmation_url(page, "https://drive.google.com/uc?export=download&id=ABC") ==
            "https://drive.google.com/uc?export=download&confirm=Xy9_&id=ABC")
    quota = "<html><head><title>Google Drive - Quota exceeded</title></head></html>"
    assert download.confirmation_url(quota, "https://drive.google.com/uc?id=ABC") is None
    assert download.page_title(quota) == "Google Drive - Quota exceeded"


def test_an_interrupted_download_resumes_where_it_stopped(server, run_here, tmp_path,
                                                          basicsr_model):
    _, data = basicsr_model
    entry = model_zoo.find("edvr-m")
    server.behaviour[drive_id(entry)] = "drop-once"
    first = run_here("vs_iedvr", "fetch", "edvr-m")
    assert first.returncode == 1 and "resume" in first.stderr
    assert models_left(tmp_path) == []
    part = tmp_path / "models" / "downloads" / (entry.file_name + ".part")
    assert part.stat().st_size == len(data) // 2

    second = run_here("vs_iedvr", "fetch", "edvr-m")
    assert second.returncode == 0, second.stderr
    ranges = [wanted for path, wanted in server.requests if path.startswith("/download")]
    assert ranges == [None, f"bytes={len(data) // 2}-"]
    metadata = model_file.read_metadata(tmp_path / "models" / "edvr-m.pt")
    assert metadata["weights"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert not part.exists()


def test_from_file_installs_the_same_model_as_the_download(server, run_here, tmp_path,
                                                           basicsr_model, monkeypatch):
    _, data = basicsr_model
    assert run_here("vs_iedvr", "fetch", "edvr-m").returncode == 0
    downloaded, _ = weights_file.network_from_model_file(tmp_path / "models" / "edvr-m.pt")

    checkpoint = tmp_path / model_zoo.find("edvr-m").file_name
    checkpoint.write_bytes(data)
    monkeypatch.setenv("IEDVR_MODEL_DIR", str(tmp_path / "offline"))
    result = run_here("vs_iedvr", "fetch", "edvr-m", "--from", checkpoint)
    assert result.returncode == 0, result.stderr
    offline, metadata = weights_file.network_from_model_file(tmp_path / "offline" / "edvr-m.pt")
    assert metadata["weights"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert downloaded.config == offline.config
    for (name, a), (_, b) in zip(downloaded.state_dict().items(), offline.state_dict().items()):
        assert torch.equal(a, b), name

    other = tmp_path / "other.pth"
    other.write_bytes(data + b"\0")
    refused = run_here("vs_iedvr", "fetch", "edvr-m", "--from", other, "--force")
    assert refused.returncode == 1 and "not the published SHA-256 prefix" in refused.stderr


def test_a_known_model_that_is_not_fetched_names_the_command(monkeypatch, tmp_path, frames):
    monkeypatch.setenv("IEDVR_MODEL_DIR", str(tmp_path))
    clip = clip_of(frames)
    for name in model_zoo.names():  # every name of the table is known to the filter
        for given in (name, name + ".pt"):
            with pytest.raises(vs.Error, match=f"not fetched yet: run `vs-iedvr fetch {name}`"):
                core.iedvr.Upscale(clip, model=given)
    with pytest.raises(vs.Error, match="vs-iedvr fetch edvr-l-vimeo"):
        vs_iedvr.upscale(clip, model="edvr-l-vimeo")
    with pytest.raises(vs.Error) as unknown:
        core.iedvr.Upscale(clip, model="edvr-xl")
    assert "fetch" not in str(unknown.value) and "does not exist" in str(unknown.value)
    with pytest.raises(model_file.ModelFileError, match="run `vs-iedvr fetch edvr-m`"):
        model_file.shipped_or_path("edvr-m")


def test_list_and_info_name_every_official_model(server, run_here, tmp_path):
    listed = run_here("vs_iedvr", "fetch", "--list")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == model_zoo.names()
    assert "Vid4 (Y) 27.35 / 0.8264" in listed.stdout
    assert run_here("vs_iedvr", "fetch", "edvr-m").returncode == 0
    info = run_here("vs_iedvr", "info")
    assert info.returncode == 0, info.stderr
    size = (tmp_path / "models" / "edvr-m.pt").stat().st_size / 1e6
    assert f"official model edvr-m: {tmp_path / 'models' / 'edvr-m.pt'} ({size:.1f} MB)" in info.stdout
    assert "official model edvr-l-vimeo: not fetched (`vs-iedvr fetch edvr-l-vimeo`)" in info.stdout
    for name in model_zoo.names():
        assert f"official model {name}: " in info.stdout


def test_unknown_names_and_bad_options_are_argument_errors(run_here):
    for arguments, message in ((["edvr-xl"], "no official model named edvr-xl"),
                               ([], "name the models to fetch"),
                               (["edvr-m", "edvr-l", "--from", "x.pth"], "installs one model"),
                               (["edvr-m", "--timeout", "0"], "--timeout must be")):
        result = run_here("vs_iedvr", "fetch", *arguments)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_mmagic_checkpoints_give_mmagics_frames(run_here, monkeypatch, tmp_path, frames):
    """mmagic's key names, converted: the filter's frames against mmagic's own EDVRNet with the
    same weights, through a plain HTTPS-style path (download.openmmlab.com's)."""
    from mmagic_oracle import mmagic_edvr

    for name, with_tsa in (("edvr-m-mmagic", True), ("edvr-m-notsa-mmagic", False)):
        network = random_offsets(mmagic_edvr().EDVRNet(
            3, 3, mid_channels=16, num_frames=5, deform_groups=4, num_blocks_extraction=2,
            num_blocks_reconstruction=2, with_tsa=with_tsa), seed=12)
        state = {f"generator.{key}": value for key, value in network.state_dict().items()}
        state["step_counter"] = torch.zeros(1)  # mmagic's EDVR model keeps one beside its generator
        data = saved({"meta": {"mmedit_version": "0.x"}, "state_dict": state})
        entry = official_like(name, data)
        monkeypatch.setattr(model_zoo, "MODELS", tuple(entry if e.name == name else e
                                                       for e in model_zoo.MODELS))
        monkeypatch.setenv("IEDVR_MODEL_DIR", str(tmp_path / "models"))
        with FileServer() as files:
            files.files[path_of(entry)] = data
            monkeypatch.setenv("IEDVR_FETCH_MIRROR", files.url)
            result = run_here("vs_iedvr", "fetch", name)
        assert result.returncode == 0, result.stderr
        # `vs-iedvr export` reads the same file the same way.
        checkpoint, exported = tmp_path / entry.file_name, tmp_path / f"{name}-exported.pt"
        checkpoint.write_bytes(data)
        result = run_here("vs_iedvr", "export", "--weights", checkpoint, "--output", exported)
        assert result.returncode == 0, result.stderr
        assert (model_file.read_metadata(exported)["weights_crc32"] ==
                model_file.read_metadata(tmp_path / "models" / f"{name}.pt")["weights_crc32"])
        out = core.iedvr.Upscale(clip_of(frames), model=name, fp16=0, device_index=-1)
        for n in (0, 3):
            np.testing.assert_allclose(planes(out.get_frame(n)), eager_frames(network, frames, n),
                                       atol=1e-5, rtol=0)
