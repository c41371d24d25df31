"""cortex_nb.method.sanity: which layers each randomisation touches (parameter by parameter), Spearman's rank
correlation against pandas, Jaccard by hand, and the check doing its job on a real extractor."""
import numpy as np
import pandas as pd
import pytest
import torch

from cortex_nb.method.extractors import ExtractorConfig, build_extractor
from cortex_nb.method.sanity import (cascading_randomisation, independent_randomisation, jaccard, randomisable_blocks,
                              randomisable_layers, rank_correlation)


def _extractor(arch="CE"):
    torch.manual_seed(0)
    f = build_extractor(ExtractorConfig(arch=arch, width=8, d=4, m=4, n_classes=3))
    f.train()(torch.randn(16, 4, 4, 4))                                 # running statistics away from 0 / 1
    return f.eval()


def _changed(a, b) -> set[str]:
    """Modules (by name) whose parameters or buffers differ between two copies."""
    sa, sb = a.state_dict(), b.state_dict()
    return {k.rsplit(".", 1)[0] for k in sa if not torch.equal(sa[k], sb[k])}


@pytest.mark.parametrize("arch", ["CE", "RE"])
def test_cascading_grows_from_the_output_and_independent_touches_one_layer(arch):
    f = _extractor(arch)
    before = {k: v.clone() for k, v in f.state_dict().items()}
    layers = randomisable_layers(f)
    assert len(layers) > 4 and layers[-1].startswith("classifier")
    casc = list(cascading_randomisation(f, seed=1))
    assert [n for n, _ in casc] == layers[::-1]
    for i, (name, g) in enumerate(casc):
        assert _changed(f, g) == set(layers[len(layers) - 1 - i:])      # this layer and every later one
    indep = list(independent_randomisation(f, seed=1))
    for name, g in indep:
        assert _changed(f, g) == {name}
    # the same layer gets the same fresh weights in both checks
    name, g_ind = indep[0]
    torch.testing.assert_close(casc[0][1].get_submodule(name).weight, g_ind.get_submodule(name).weight)
    for k, v in f.state_dict().items():                                 # the extractor itself is untouched
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("arch", ["CE", "RE"])
def test_blocks_partition_the_layers_and_randomise_a_block_at_a_time(arch):
    f = _extractor(arch)
    layers = randomisable_layers(f)
    groups = randomisable_blocks(f)
    assert [n for g in groups for n in g] == layers                     # a partition, in order
    norms = (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)
    for g in groups:
        assert not isinstance(f.get_submodule(g[0]), norms)             # a norm never starts a group
        prefixes = {".".join(n.split(".")[:2]) for n in g if n.startswith("layers.")}
        assert len(prefixes) <= 1                                       # never two residual blocks in one
    if arch == "RE":                                                    # one step per residual block
        assert sum(g[0].startswith("layers.") for g in groups) == len({n.split(".")[1] for n in layers
                                                                      if n.startswith("layers.")})
    casc = list(cascading_randomisation(f, seed=1, blocks=True))
    assert len(casc) == len(groups)
    for i, (_, g) in enumerate(casc):
        assert _changed(f, g) == {n for grp in groups[len(groups) - 1 - i:] for n in grp}
    for (_, g), grp in zip(independent_randomisation(f, seed=1, blocks=True), groups[::-1]):
        assert _changed(f, g) == set(grp)


def test_rank_correlation_equals_pandas_spearman_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (6, 4, 4), generator=g).float()             # many ties
    b = a + torch.randint(0, 3, (6, 4, 4), generator=g).float()
    got = rank_correlation(a, b)
    for i in range(6):
        frame = pd.DataFrame({"a": a[i].flatten().numpy(), "b": b[i].flatten().numpy()})
        want = frame.corr(method="spearman").loc["a", "b"]               # pandas' own (Cython) Spearman
        assert float(got[i]) == pytest.approx(want, abs=1e-12)
    assert float(rank_correlation(a[:1], a[:1] * 3 + 1)[0]) == pytest.approx(1.0)
    assert float(rank_correlation(a[:1], -a[:1])[0]) == pytest.approx(-1.0)
    assert np.isnan(float(rank_correlation(torch.ones(1, 4, 4), a[:1])[0]))


def test_jaccard_by_hand_ignores_padding():
    a = torch.tensor([[1, 2, 3, -1], [5, -1, -1, -1], [-1, -1, -1, -1]])
    b = torch.tensor([[3, 2, 9, 8], [6, -1, -1, -1], [-1, -1, -1, -1]])
    np.testing.assert_allclose(jaccard(a, b).numpy(), [2 / 5, 0.0, 1.0])


def test_a_destroyed_extractor_gives_a_different_token_saliency():
    """The point of the check: the TSV of the trained extractor against itself correlates perfectly, and
    against the fully randomised extractor much less."""
    from cortex_nb.method.saliency import TokenSaliency

    f = _extractor()
    E = torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    t = torch.zeros(8, dtype=torch.long)

    def tsv(model):
        return TokenSaliency.paper(model, n_samples=4).attribute(E, t, generator=torch.Generator().manual_seed(0))

    base = tsv(f)
    np.testing.assert_allclose(rank_correlation(base, tsv(f)).numpy(), 1.0)
    *_, (name, destroyed) = cascading_randomisation(f, seed=5)
    assert float(rank_correlation(base, tsv(destroyed)).mean()) < 0.8
