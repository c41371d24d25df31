"""cortex_nb.method.token_search: parts per position against a per-patch count by hand, and the ranked query
against a brute-force loop over ids."""
import numpy as np
import pytest

from cortex_nb.method.token_search import PARTS, position_parts, search_tokens
from cortex_nb.toy.world import BACKGROUND, BODY, HEAD


def test_position_parts_takes_the_majority_part_of_each_patch_head_winning_ties():
    masks = np.zeros((1, 4, 4), np.uint8)              # m = 2: four 2 x 2 patches
    masks[0, 0, 0] = HEAD                              # patch (0, 0): 1 head, 3 background -> background
    masks[0, :2, 2:] = BODY                            # patch (0, 1): all body
    masks[0, 2, 0:2] = HEAD                            # patch (1, 0): 2 head, 2 background -> head (tie)
    masks[0, 2:, 2:] = [[BODY, HEAD], [HEAD, HEAD]]    # patch (1, 1): 3 head, 1 body -> head
    assert position_parts(masks, 2).tolist() == [[[BACKGROUND, BODY], [HEAD, HEAD]]]
    with pytest.raises(ValueError, match="grid"):
        position_parts(masks, 3)


def _brute(tokens, parts, K, part, keep):
    rows = []
    total = sum(int(parts[b][i, j] == PARTS[part]) for b in range(len(tokens)) if keep[b]
                for i in range(tokens.shape[1]) for j in range(tokens.shape[2]))
    for t in range(K):
        count = on = 0
        for b in range(len(tokens)):
            if not keep[b]:
                continue
            for i in range(tokens.shape[1]):
                for j in range(tokens.shape[2]):
                    if tokens[b, i, j] == t:
                        count += 1
                        on += int(parts[b, i, j] == PARTS[part])
        if count:
            rows.append((t, count, on, on / count, on / total))
    return rows


@pytest.mark.parametrize("query", [{}, {"cls": 1}, {"scene": "water"}, {"cls": 0, "scene": 1}])
def test_search_equals_a_brute_force_count_and_ranks_best_first(query):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 12, (20, 3, 3))
    parts = rng.integers(0, 3, (20, 3, 3))
    labels, scenes = rng.integers(0, 2, 20), rng.integers(0, 4, 20)
    keep = np.ones(20, bool)
    if "cls" in query:
        keep &= labels == query["cls"]
    if "scene" in query:
        keep &= scenes == (2 if query["scene"] == "water" else query["scene"])
    df = search_tokens(tokens, parts, 12, "head", labels=labels, scenes=scenes, **query)
    expect = {r[0]: r for r in _brute(tokens, parts, 12, "head", keep)}
    assert set(df.token) == set(expect)
    for r in df.itertuples():
        t, count, on, prec, rec = expect[r.token]
        assert (r.count, r.on_part) == (count, on)
        assert r.precision == pytest.approx(prec) and r.recall == pytest.approx(rec)
    keys = list(zip(-df.precision, -df["count"], df.token))
    assert keys == sorted(keys)                                          # precision, then count, then id
    by_recall = search_tokens(tokens, parts, 12, "head", labels=labels, scenes=scenes, rank_by="recall", **query)
    assert list(by_recall.recall) == sorted(by_recall.recall, reverse=True)


def test_min_count_top_and_bad_queries():
    tokens = np.array([[[0, 1], [1, 2]]])
    parts = np.array([[[HEAD, HEAD], [BODY, HEAD]]])
    df = search_tokens(tokens, parts, 4, "head")
    assert df.token.tolist() == [0, 2, 1] and df.precision.tolist() == [1.0, 1.0, 0.5]
    assert search_tokens(tokens, parts, 4, "head", min_count=2).token.tolist() == [1]
    assert len(search_tokens(tokens, parts, 4, "head", top=1)) == 1
    with pytest.raises(ValueError, match="part"):
        search_tokens(tokens, parts, 4, "wing")
    with pytest.raises(ValueError, match=r"\[0, K = 2\)"):
        search_tokens(tokens, parts, 2, "head")
    with pytest.raises(ValueError, match="labels"):
        search_tokens(tokens, parts, 4, "head", cls=1)
