"""Tests of cortex_nb.engine.train (paper A.1.3 fit loop): resume, checkpoints, transforms, metrics."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from cortex_nb.engine.inference import evaluate, predict_logits, topk_accuracy
from cortex_nb.engine.train import FitConfig, fit


@pytest.fixture(autouse=True)
def seeded():
    """Fixed seeds (conftest sets one intra-op thread)."""
    torch.manual_seed(1234)
    np.random.seed(1234)
    yield


def _blobs(n=96, d=8, k=3, seed=0, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 2
    y = torch.arange(n) % k
    x = centers[y] + noise * torch.randn(n, d, generator=g)
    return x, y


def _mlp(d=8, k=3, dropout=0.3):
    return nn.Sequential(
        nn.Linear(d, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, k)
    )


def _cfg(**kw):
    base = dict(epochs=4, batch_size=32, lr=1e-2, step_size=2, gamma=0.5, progress=False, seed=7)
    base.update(kw)
    return FitConfig(**base)


def _noise_augment(x):
    return x + 0.1 * torch.randn_like(x)  # draws from the global RNG, like image augmentation


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_states_equal(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


# ------------------------------------------------------------------ resume / checkpoints


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    train, val = _blobs(96, seed=0), _blobs(48, seed=1)
    init = _mlp()
    cfg = _cfg()

    straight = fit(copy.deepcopy(init), train, val, cfg, ckpt_dir=tmp_path / "a",
                   augment=_noise_augment)

    calls = {"n": 0}

    def crashing_augment(x):  # 3 batches / epoch: call 8 is the 2nd batch of epoch 3
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("simulated crash")
        return _noise_augment(x)

    with pytest.raises(KeyboardInterrupt):
        fit(copy.deepcopy(init), train, val, cfg, ckpt_dir=tmp_path / "b", augment=crashing_augment)
    assert _load(tmp_path / "b" / "last.pt")["epoch"] == 2

    torch.manual_seed(999)  # a fresh process would have another global RNG state
    calls["n"] = 100  # no more crashes
    resumed = fit(copy.deepcopy(init), train, val, cfg, ckpt_dir=tmp_path / "b",
                  augment=crashing_augment)
    assert calls["n"] == 100 + 2 * 3  # only epochs 3 and 4 were trained again

    a, b = _load(tmp_path / "a" / "last.pt"), _load(tmp_path / "b" / "last.pt")
    _assert_states_equal(a["model"], b["model"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k in a["optimizer"]["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(
                a["optimizer"]["state"][k][name], b["optimizer"]["state"][k][name], atol=1e-6, rtol=0
            )
    assert a["scheduler"] == b["scheduler"]
    cols = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "skipped"]
    np.testing.assert_allclose(
        straight.history[cols].to_numpy(float), resumed.history[cols].to_numpy(float), atol=1e-6
    )
    assert straight.best_epoch == resumed.best_epoch
    _assert_states_equal(straight.model.state_dict(), resumed.model.state_dict())


def test_best_checkpoint_is_argmax_of_validation_history(tmp_path):
    # a noisy problem with a large learning rate so validation accuracy goes up and down
    train, val = _blobs(120, seed=3, noise=3.0), _blobs(60, seed=4, noise=3.0)
    cfg = _cfg(epochs=8, lr=0.3, step_size=100)
    res = fit(_mlp(), train, val, cfg, ckpt_dir=tmp_path)
    h = res.history
    assert list(h.epoch) == list(range(1, 9))
    assert h.val_acc.nunique() > 1, "test setup: validation accuracy should vary"
    argmax_epoch = int(h.epoch[h.val_acc.to_numpy().argmax()])  # first maximum
    assert res.best_epoch == argmax_epoch
    assert res.best_val_acc == pytest.approx(h.val_acc.max())
    best = _load(tmp_path / "best.pt")
    assert best["epoch"] == argmax_epoch
    _assert_states_equal(res.model.state_dict(), best["model"], atol=0)
    # independent recomputation of the returned model's validation accuracy
    logits = predict_logits(res.model, val[0])
    assert (logits.argmax(1) == val[1]).float().mean().item() == pytest.approx(res.best_val_acc)
    # last.pt holds the last epoch, which need not be the best
    assert _load(tmp_path / "last.pt")["epoch"] == 8


def test_finished_run_is_returned_without_training(tmp_path):
    train, val = _blobs(64, seed=0), _blobs(32, seed=1)
    first = fit(_mlp(), train, val, _cfg(epochs=2), ckpt_dir=tmp_path)

    def must_not_run(x):
        raise AssertionError("a finished run must not train again")

    again = fit(_mlp(), train, val, _cfg(epochs=2), ckpt_dir=tmp_path, augment=must_not_run)
    assert again.best_epoch == first.best_epoch
    _assert_states_equal(again.model.state_dict(), first.model.state_dict(), atol=0)
    np.testing.assert_array_equal(
        again.history.drop(columns="seconds").to_numpy(float),
        first.history.drop(columns="seconds").to_numpy(float),
    )


def test_resume_with_other_settings_is_refused(tmp_path):
    train, val = _blobs(64), _blobs(32, seed=1)
    fit(_mlp(), train, val, _cfg(epochs=1), ckpt_dir=tmp_path)
    with pytest.raises(ValueError, match="lr"):
        fit(_mlp(), train, val, _cfg(epochs=2, lr=0.5), ckpt_dir=tmp_path)
    # more epochs with the same settings is a continuation
    res = fit(_mlp(), train, val, _cfg(epochs=2), ckpt_dir=tmp_path)
    assert list(res.history.epoch) == [1, 2]


def test_checkpoints_load_with_weights_only(tmp_path):
    fit(_mlp(), _blobs(64), _blobs(32, seed=1), _cfg(epochs=1), ckpt_dir=tmp_path)
    for f in ("last.pt", "best.pt"):
        assert isinstance(torch.load(tmp_path / f, weights_only=True), dict)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


# ------------------------------------------------------------------ data paths / transform


def test_token_transform_equals_precomputed_embeddings():
    k, d, n = 16, 5, 64
    codebook = torch.randn(k, d)
    tokens = torch.randint(0, k, (n, 4, 4)).to(torch.uint16)  # as stored on disk
    y = torch.randint(0, 3, (n,))
    emb = F.embedding(tokens.long(), codebook).permute(0, 3, 1, 2).contiguous()  # precomputed

    seen = []

    def lookup(t):  # as stages.embed_fn: contiguous, so both runs feed the same layout to the conv
        seen.append((t.dtype, t.device))
        return F.embedding(t.long(), codebook).permute(0, 3, 1, 2).contiguous()

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(d, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    cfg = _cfg(epochs=2, batch_size=16)
    a = fit(model(), (tokens, y), (tokens[:32], y[:32]), cfg, transform=lookup)
    b = fit(model(), (emb, y), (emb[:32], y[:32]), cfg)
    assert seen and all(dt == torch.uint16 and dev == torch.device(cfg.device) for dt, dev in seen)
    # the same values in the same layout through the same kernels: equal, not merely close (a
    # layout difference alone parts the weights by rounding that Adam amplifies, CPU-dependently)
    _assert_states_equal(a.model.state_dict(), b.model.state_dict(), atol=0)
    cols = ["train_loss", "train_acc", "val_loss", "val_acc"]
    np.testing.assert_array_equal(a.history[cols].to_numpy(float), b.history[cols].to_numpy(float))
    torch.testing.assert_close(
        predict_logits(a.model, tokens, transform=lookup, batch_size=7), predict_logits(b.model, emb)
    )


def test_dataset_path_equals_tensor_fast_path():
    # RandomSampler draws torch.randperm(n, generator) exactly like the fast path
    x, y = _blobs(80)
    val = _blobs(40, seed=1)
    torch.manual_seed(0)
    m = _mlp(dropout=0.0)
    a = fit(copy.deepcopy(m), (x, y), val, _cfg(epochs=2, batch_size=16))
    b = fit(copy.deepcopy(m), TensorDataset(x, y), TensorDataset(*val), _cfg(epochs=2, batch_size=16))
    _assert_states_equal(a.model.state_dict(), b.model.state_dict())


def test_max_steps_per_epoch_caps_training():
    calls = {"n": 0}

    def count(x):
        calls["n"] += 1
        return x

    res = fit(_mlp(), _blobs(96), None, _cfg(epochs=2, max_steps_per_epoch=2), augment=count)
    assert calls["n"] == 4
    # without validation the last epoch is the result
    assert res.best_epoch == 2 and math.isnan(res.best_val_acc)
    assert res.history.val_acc.isna().all()


def test_skip_nonfinite_skips_exactly_the_poisoned_batch():
    x, y = _blobs(64, seed=5)
    poisoned = 37
    x[poisoned, 2] = float("nan")
    torch.manual_seed(0)
    init = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    cfg = _cfg(epochs=2, batch_size=16, step_size=1, gamma=0.5)
    res = fit(copy.deepcopy(init), (x, y), None, cfg)
    assert list(res.history.skipped) == [1, 1]
    assert all(torch.isfinite(v.float()).all() for v in res.model.state_dict().values())

    # slow reference loop: same shuffler, the batch holding the poisoned row never runs
    ref = copy.deepcopy(init)
    opt = torch.optim.Adam(ref.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma)
    gen = torch.Generator().manual_seed(cfg.seed)
    ref.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            if poisoned in idx.tolist():
                continue
            loss = F.cross_entropy(ref(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    _assert_states_equal(res.model.state_dict(), ref.state_dict())

    bad = fit(copy.deepcopy(init), (x, y), None, _cfg(epochs=1, batch_size=16, skip_nonfinite=False))
    assert math.isnan(bad.history.train_loss[0])
    assert any(torch.isnan(p).any() for p in bad.model.parameters())


# ------------------------------------------------------------------ evaluation helpers


def test_evaluate_and_predict_logits_match_direct_computation():
    x, y = _blobs(50)
    m = _mlp()
    m.train()
    logits = predict_logits(m, x, batch_size=7)
    assert m.training  # mode restored
    m.eval()
    with torch.no_grad():
        direct = m(x)
    torch.testing.assert_close(logits, direct)
    torch.testing.assert_close(predict_logits(m, x, batch_size=50), logits)
    loss, acc = evaluate(m, (x, y), batch_size=13)
    assert loss == pytest.approx(F.cross_entropy(direct, y).item(), rel=1e-5)
    assert acc == pytest.approx((direct.argmax(1) == y).float().mean().item())


def test_topk_accuracy_hand_made():
    logits = torch.tensor(
        [[0.9, 0.5, 0.1, 0.0],  # label 0: rank 1
         [0.9, 0.5, 0.1, 0.0],  # label 2: rank 3
         [0.1, 0.2, 0.3, 0.4],  # label 1: rank 3
         [0.4, 0.3, 0.2, 0.1]]  # label 3: rank 4
    )
    labels = torch.tensor([0, 2, 1, 3])
    acc = topk_accuracy(logits, labels, ks=(1, 2, 3, 4, 10))
    assert acc == {1: 0.25, 2: 0.25, 3: 0.75, 4: 1.0, 10: 1.0}


def test_topk_accuracy_matches_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    n, c = 300, 20
    logits = torch.randn(n, c)
    labels = torch.randint(0, c, (n,))
    ours = topk_accuracy(logits, labels)
    for k in (1, 3, 5, 10):
        ref = tm.multiclass_accuracy(logits, labels, num_classes=c, top_k=k, average="micro")
        assert ours[k] == pytest.approx(ref.item(), abs=1e-6), k


def test_eval_mode_restores_every_submodule_mode():
    from cortex_nb.engine.inference import eval_mode

    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout(0.5))
    net.train()
    net[1].eval()                                    # a caller's frozen BatchNorm
    with eval_mode(net) as m:
        assert m is net and not any(x.training for x in net.modules())
    assert [x.training for x in net.modules()] == [True, True, False, True]
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError("restored on errors too")
    assert [x.training for x in net.modules()] == [True, True, False, True]
