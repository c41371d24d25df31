"""Tests of cortex_nb.method.evaluators and cortex_nb.toy.evaluators (section 4.1's classifiers):
preprocessing, offline loading, probabilities, toy stand-ins, save/load."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from PIL import Image

from cortex_nb.method import evaluators as E
from cortex_nb.toy import evaluators as TE
from cortex_nb.errors import UserError
from cortex_nb.errors import CheckpointError
from cortex_nb.engine.train import FitConfig
from damage import flip_bytes_in_tensor

# one grey level after normalisation (PIL rounds its resized uint8 image; we resize in float)
GREY = 1.0 / 255 / min(E.IMAGENET_STD)


@pytest.fixture(autouse=True)
def seeded():
    """Fixed seeds (conftest sets one intra-op thread)."""
    torch.manual_seed(4321)
    np.random.seed(4321)
    yield


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to download fails the test."""

    def boom(*a, **k):
        raise AssertionError(f"network access attempted: {a[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", boom)
    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)
    monkeypatch.setattr(urllib.request, "urlopen", boom)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """torch.hub's directory points at an empty folder (real cached weights stay out of play)."""
    hub = tmp_path / "hub"
    hub.mkdir()
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    yield hub
    torch.hub.set_dir(old)


def _photo(h=300, w=400, seed=0) -> torch.Tensor:
    """A smooth random uint8 (3, h, w) image with a little texture."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 10, w // 10, generator=g)
    img = F.interpolate(base, size=(h, w), mode="bicubic", align_corners=False)
    img = (img + 0.05 * torch.rand(img.shape, generator=g)).clamp(0, 1)
    return (img[0] * 255).round().to(torch.uint8)


def _pil(u8: torch.Tensor) -> Image.Image:
    return Image.fromarray(u8.permute(1, 2, 0).numpy())


# ------------------------------------------------------------------ preprocessing


@pytest.mark.parametrize("name", ["resnet18", "vit_b_16"])
def test_preprocess_matches_weights_transforms_on_pil(name):
    u8 = _photo()
    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    ref = weights.transforms()(_pil(u8))  # torchvision's own PIL pipeline
    ev = E.Evaluator(nn.Identity(), E.imagenet_spec(name))
    for images in (u8[None], u8.permute(1, 2, 0)[None], u8[None].float() / 127.5 - 1):
        ours = ev.preprocess(images)[0]
        assert ours.shape == ref.shape == (3, 224, 224)
        torch.testing.assert_close(ours, ref, atol=1.5 * GREY, rtol=0)
        assert (ours - ref).abs().mean() < 0.4 * GREY  # rounding alone: ~0.3


def test_reference_preprocess_is_resize_224_square():
    u8 = _photo(h=180, w=260, seed=1)
    ref = T.Compose(
        [T.Resize((224, 224)), T.ToTensor(), T.Normalize(E.IMAGENET_MEAN, E.IMAGENET_STD)]
    )(_pil(u8))
    ev = E.Evaluator(nn.Identity(), E.imagenet_spec("resnet50", preprocess="reference"))
    ours = ev.preprocess(u8[None])[0]
    torch.testing.assert_close(ours, ref, atol=1.5 * GREY, rtol=0)
    with pytest.raises(ValueError, match="preprocess"):
        E.imagenet_spec("resnet50", preprocess="pretty")


# ------------------------------------------------------------------ offline loading


def test_missing_weights_error_names_file_url_and_directory(tmp_path, empty_hub, no_network):
    wdir = tmp_path / "weights"
    wdir.mkdir()
    with pytest.raises(E.WeightsUnavailableError) as err:
        E.load_imagenet_evaluators(["resnet18", "vit_b_32"], weights_dir=wdir)
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and "vit_b_32-d86f8d99.pth" in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert str(wdir) in msg
    assert E.weights_file("resnet18") == (
        "resnet18-f37072fd.pth", "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    )


def test_fake_weights_load_offline(tmp_path, empty_hub, no_network):
    torch.manual_seed(0)
    fake = torchvision.models.resnet18(weights=None)
    (tmp_path / "w").mkdir()
    torch.save(fake.state_dict(), tmp_path / "w" / "resnet18-f37072fd.pth")

    evs = E.load_imagenet_evaluators(["resnet18"], weights_dir=tmp_path / "w", check_hash=False)
    ev = evs["resnet18"]
    assert isinstance(ev, E.Evaluator) and not ev.training
    for k, v in fake.state_dict().items():
        assert torch.equal(ev.model.state_dict()[k], v), k
    assert ev.n_classes == 1000 and ev.categories[0] == "tench" and ev.display_name == "ResNet18"

    # the same file found through torch.hub's checkpoint directory
    (empty_hub / "checkpoints").mkdir()
    (tmp_path / "w" / "resnet18-f37072fd.pth").rename(empty_hub / "checkpoints" / "resnet18-f37072fd.pth")
    ev2 = E.load_imagenet_evaluator("resnet18", check_hash=False)
    img = _photo(64, 80)[None]
    fake.eval()
    with torch.no_grad():
        direct = fake(ev2.preprocess(img)).softmax(1)
    torch.testing.assert_close(ev2.predict_proba(img), direct)

    # a file whose SHA-256 does not match its name is refused by default, as a user error
    with pytest.raises(UserError, match="SHA-256 prefix f37072fd") as err:
        E.load_imagenet_evaluator("resnet18")
    assert isinstance(err.value, RuntimeError)  # what it always was
    assert "resnet18-f37072fd.pth" in err.value.message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in err.value.fix
    assert "check_hash=False" in err.value.fix


# ------------------------------------------------------------------ predict_proba


def _toy(name="resnet18", **kw):
    torch.manual_seed(0)
    return TE.build_toy_evaluator(name, **kw).eval()


@pytest.mark.parametrize("name", ["resnet18", "vit_p8"])
def test_predict_proba_rows_sum_to_one_and_batch_size_independent(name):
    ev = _toy(name)
    x = torch.rand(10, 3, 32, 32) * 2 - 1
    p = ev.predict_proba(x, batch_size=10)
    assert p.shape == (10, 10)
    torch.testing.assert_close(p.sum(1), torch.ones(10))
    torch.testing.assert_close(ev.predict_proba(x, batch_size=3), p, atol=1e-6, rtol=1e-5)
    ev.train()
    torch.testing.assert_close(ev.predict_proba(x, batch_size=4), p, atol=1e-6, rtol=1e-5)
    assert ev.training  # mode restored


def test_input_conventions_agree():
    ev = _toy()
    u8 = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)  # toyworld's layout
    signed = u8.permute(0, 3, 1, 2).float() / 127.5 - 1  # toyworld.to_tensor
    p = ev.predict_proba(signed)
    torch.testing.assert_close(ev.predict_proba(u8), p, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ev.predict_proba(u8.permute(0, 3, 1, 2)), p, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ev.predict_proba(signed[0])[0], p[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="3, H, W"):
        ev.predict_proba(torch.rand(2, 32, 32, 3))  # float channels-last is ambiguous: refused


# ------------------------------------------------------------------ toy stand-ins


def test_toy_architectures_are_torchvision_and_vit_patch_ratio():
    r = _toy("resnet18").model
    assert isinstance(r, torchvision.models.ResNet)
    v4, v8 = _toy("vit_p4").model, _toy("vit_p8").model
    assert isinstance(v4, torchvision.models.VisionTransformer)
    assert (v4.patch_size, v8.patch_size) == (4, 8)  # 16:32 like ViT-B/16 vs ViT-B/32
    assert v4.seq_length == 1 + 64 and v8.seq_length == 1 + 16
    with pytest.raises(ValueError, match="unknown toy evaluator"):
        TE.build_toy_evaluator("alexnet")


def test_toy_augment_is_a_flip_and_a_replicate_shift():
    x = torch.randn(6, 3, 8, 8)
    k = 2
    out = TE.toy_augment(max_shift=k, flip=True)(x)
    padded = F.pad(x, (k, k, k, k), mode="replicate")
    for i in range(len(x)):
        candidates = [
            padded[i, :, k + dy : k + dy + 8, k + dx : k + dx + 8]
            for dy in range(-k, k + 1)
            for dx in range(-k, k + 1)
        ]
        flipped = F.pad(x[i : i + 1].flip(-1), (k, k, k, k), mode="replicate")[0]
        candidates += [
            flipped[:, k + dy : k + dy + 8, k + dx : k + dx + 8]
            for dy in range(-k, k + 1)
            for dx in range(-k, k + 1)
        ]
        assert any(torch.equal(out[i], c) for c in candidates), i
    # no flip, no shift: identity
    torch.testing.assert_close(TE.toy_augment(max_shift=0, flip=False)(x), x)


def test_save_load_roundtrip_weights_only(tmp_path):
    ev = _toy("vit_p4", mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    path = TE.save_evaluator(ev, tmp_path / "ev.pt")
    blob = torch.load(path, weights_only=True)
    assert blob["spec"]["name"] == "vit_p4"
    back = TE.load_evaluator(path)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(back.predict_proba(x), ev.predict_proba(x))
    assert back.spec["mean"] == pytest.approx([0.4, 0.5, 0.6])
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        TE.load_evaluator(tmp_path / "nothere.pt")


def test_a_shipped_float16_file_loads_as_float32_with_exactly_the_rounded_weights(tmp_path):
    """The ResNets ship their floating-point tensors in float16 (tools/ship_artifacts.py): the loader casts them back
    to float32, so the loaded model is the trained one rounded to float16 -- on every machine the same weights."""
    from cortex_nb.io.files import save_with_checksum

    ev = _toy("resnet18")
    with torch.no_grad():                                  # BN running stats away from their init, as trained
        for name, b in ev.model.named_buffers():
            if b.is_floating_point():
                b.uniform_(0.5, 1.5)
    path = TE.save_evaluator(ev, tmp_path / "ev.pt")
    blob = torch.load(path, weights_only=True)
    blob["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    save_with_checksum(blob, tmp_path / "half.pt")
    back = TE.load_evaluator(tmp_path / "half.pt")
    for k, v in back.model.state_dict().items():
        want = ev.model.state_dict()[k]
        assert v.dtype == want.dtype, k
        if v.is_floating_point():
            assert torch.equal(v, want.half().to(want.dtype)), k
        else:
            assert torch.equal(v, want), k
    assert not torch.equal(back.model.conv1.weight, ev.model.conv1.weight)     # really rounded: float16 on disk
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(back.predict_proba(x), ev.predict_proba(x), atol=2e-2, rtol=0)


def _shapes(n, seed):
    """Two classes a tiny model tells apart quickly: bright square left vs right half."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.full((n, 32, 32, 3), 40, dtype=torch.uint8)
    for i in range(n):
        c = 4 + int(torch.randint(0, 6, (1,), generator=g)) + (16 if y[i] else 0)
        r = 8 + int(torch.randint(0, 12, (1,), generator=g))
        x[i, r : r + 8, c : c + 8] = 230
    return x, y


def test_train_toy_evaluators_trains_saves_and_resumes(tmp_path):
    train, val = _shapes(64, 0), _shapes(32, 1)
    cfg = FitConfig(epochs=1, batch_size=16, progress=False, seed=3)
    out = TE.train_toy_evaluators(
        train, val, names=["vit_p8"], fit_cfg=cfg, ckpt_dir=tmp_path, augment=lambda x: x
    )
    ev, res = out["vit_p8"]
    assert res.history.shape[0] == 1 and 0.0 <= res.best_val_acc <= 1.0
    # normalisation comes from the training images (independent computation)
    unit = train[0].float().div(255)
    np.testing.assert_allclose(ev.spec["mean"], unit.mean((0, 1, 2)).numpy(), atol=1e-5)
    np.testing.assert_allclose(ev.spec["std"], unit.std((0, 1, 2), unbiased=False).numpy(), atol=1e-5)
    # the validation accuracy fit reports is the saved evaluator's accuracy on val
    loaded = TE.load_evaluator(tmp_path / "vit_p8.pt")
    acc = (loaded.predict_proba(val[0]).argmax(1) == val[1]).float().mean().item()
    assert acc == pytest.approx(res.best_val_acc)
    # a finished run is loaded, not retrained
    again = TE.train_toy_evaluators(
        train, val, names=["vit_p8"], fit_cfg=cfg, ckpt_dir=tmp_path,
        augment=lambda x: (_ for _ in ()).throw(AssertionError("retrained")),
    )
    torch.testing.assert_close(again["vit_p8"][0].predict_proba(val[0]), loaded.predict_proba(val[0]))


# ------------------------------------------------------------------ damaged files


def test_save_evaluator_writes_sidecar_atomically(tmp_path, monkeypatch):
    import hashlib
    import os

    ev = _toy("vit_p8")
    old = os.umask(0o022)
    try:
        path = TE.save_evaluator(ev, tmp_path / "ev.pt")
    finally:
        os.umask(old)
    side = tmp_path / "ev.pt.sha256"
    assert side.read_text() == hashlib.sha256(path.read_bytes()).hexdigest() + "\n"
    assert path.stat().st_mode & 0o777 == 0o644  # files.atomic_path: 0o666 & ~umask
    first, first_sum = path.read_bytes(), side.read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        TE.save_evaluator(_toy("vit_p4"), path)
    assert path.read_bytes() == first and side.read_text() == first_sum
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.pt", "ev.pt.sha256"]


def test_damaged_evaluator_file_is_refused(tmp_path):
    import hashlib

    ev = _toy("resnet18")
    path = TE.save_evaluator(ev, tmp_path / "resnet18.pt")
    recorded = (tmp_path / "resnet18.pt.sha256").read_text().strip()
    member = flip_bytes_in_tensor(path, ev.model.state_dict()["layer4.1.conv2.weight"])
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    # with its sidecar: the SHA-256 check names both digests
    with pytest.raises(CheckpointError) as err:
        TE.load_evaluator(path)
    assert recorded in err.value.message and actual in err.value.message
    assert f"delete {path} (and {path}.sha256)" in err.value.fix
    # without (a file from elsewhere): the zip CRC check names the damaged member
    (tmp_path / "resnet18.pt.sha256").unlink()
    with pytest.raises(CheckpointError) as err:
        TE.load_evaluator(path)
    assert str(path) in err.value.message and repr(member) in err.value.message
    assert err.value.fix.startswith(f"the file is damaged (truncated or altered): delete {path}")
    assert "rerun the evaluators stage" in err.value.fix


def test_damaged_torchvision_weights_unhashed_fail_the_crc(tmp_path, empty_hub, no_network):
    torch.manual_seed(0)
    fake = torchvision.models.resnet18(weights=None)
    wdir = tmp_path / "w"
    wdir.mkdir()
    path = wdir / "resnet18-f37072fd.pth"
    torch.save(fake.state_dict(), path)
    member = flip_bytes_in_tensor(path, fake.state_dict()["fc.weight"])
    with pytest.raises(CheckpointError) as err:
        E.load_imagenet_evaluator("resnet18", weights_dir=wdir, check_hash=False)
    assert str(path) in err.value.message and repr(member) in err.value.message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in err.value.fix


def test_missing_evaluator_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nothere.pt") as err:
        TE.load_evaluator(tmp_path / "nothere.pt")
    assert isinstance(err.value, FileNotFoundError) and "train" in err.value.fix
