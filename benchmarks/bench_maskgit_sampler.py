"""Benchmark: the toy MaskGIT's sampler (profile toy-maskgit, notebook 01's dataset).

Contenders on the shipped toy MaskGIT (cortex_nb/artifacts/toy-maskgit), the profile's knobs (4 steps, temperature 1,
choice temperature 4.5), the same labels in the profile's order (classes in runs, as a dataset shard holds them) and
the profile's batch of 512:
- ours: ``MaskGITVQGM.sample``: the prior in calls of 64 rows, once per distinct label at the all-[MASK] first step,
  logits and draws at masked positions only, inverse-CDF draws (``cortex_nb.toy.maskgit_sampler``).
- before: the sampler as it was until 2026-12-07 (:func:`decode_before`, written out here): one prior call per step
  over the whole batch, logits at every position, ``torch.multinomial`` on every position.
The two draw differently from the same distribution, so sampled tokens differ; agreement is checked where both are
deterministic: greedy decoding (top-k 1, no re-masking noise) must give IDENTICAL tokens (asserted).
Run: ``python benchmarks/bench_maskgit_sampler.py [--quick] [--threads 2]``.
"""
from __future__ import annotations

import logging
import math

import _common as C
import torch

from cortex_nb.toy.maskgit_sampler import cosine_schedule
from cortex_nb.toy.maskgit_training import load_maskgit
from cortex_nb.vqgm.taming_compat import filter_top_k_top_p

ARTIFACT = C.ROOT / "cortex_nb" / "artifacts" / "toy-maskgit"
KNOBS = {"steps": 4, "choice_temperature": 4.5}     # cortex_nb/profiles/toy-maskgit.yaml


@torch.no_grad()
def decode_before(prior, labels: torch.Tensor, *, steps: int, temperature: float = 1.0, top_k=None,
                  choice_temperature: float = 0.0, generator=None) -> torch.Tensor:
    """The MaskGIT sampler before 2026-12-07, for comparison only: labels (B,) -> tokens (B, m*m)."""
    B, n, K = labels.shape[0], prior.m * prior.m, prior.K
    x = torch.full((B, n), prior.mask_id, dtype=torch.int64)
    for t, n_masked in enumerate(cosine_schedule(n, steps)):
        masked = x == prior.mask_id
        logits = prior(x, labels).float() / temperature                          # (B, n, K)
        logp = logits.log_softmax(-1)
        if top_k is not None:
            logits = filter_top_k_top_p(logits, top_k=top_k, top_p=None)
        drawn = torch.multinomial(logits.softmax(-1).reshape(-1, K), 1, generator=generator).reshape(B, n)
        conf = logp.gather(-1, drawn[..., None])[..., 0]
        noise_scale = choice_temperature * (1.0 - (t + 1) / steps)
        if noise_scale > 0:
            u = torch.rand(conf.shape, generator=generator).clamp(1e-20, 1 - 1e-7)
            conf = conf + noise_scale * -torch.log(-torch.log(u))
        x = torch.where(masked, drawn, x)
        if n_masked:
            conf = conf.masked_fill(~masked, math.inf)
            x.scatter_(1, conf.argsort(dim=1, stable=True)[:, :n_masked], prior.mask_id)
    return x


def main(argv=None) -> dict:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    B, repeats = (96, 1) if args.quick else (1024, 3)
    logging.getLogger("cortex_nb").setLevel(logging.WARNING)
    vq = load_maskgit(ARTIFACT, sampler={"steps": KNOBS["steps"]})
    prior = vq.net.prior
    labels = torch.arange(B) * vq.n_classes // B                      # classes in runs, as in a dataset shard
    batch = min(512, B)

    def before(**kw):
        gen = torch.Generator().manual_seed(0)
        return torch.cat([decode_before(prior, labels[s:s + batch], generator=gen, **kw)
                          for s in range(0, B, batch)]).reshape(-1, vq.m, vq.m)

    res = C.compare({"ours": lambda: vq.sample(labels, seed=0, batch_size=batch, **KNOBS),
                     "before": lambda: before(**KNOBS)}, repeats=repeats)
    greedy = vq.sample(labels, seed=0, batch_size=batch, top_k=1, steps=KNOBS["steps"], choice_temperature=0.0)
    assert torch.equal(greedy, before(top_k=1, steps=KNOBS["steps"])), "greedy decoding disagrees"
    a = res["first"]["ours"]
    assert a.shape == (B, vq.m, vq.m) and 0 <= int(a.min()) and int(a.max()) < vq.K
    n_par = sum(p.numel() for p in prior.parameters())
    rows = [C.row("MaskGIT sampling: chunked, masked-only inverse-CDF vs one call, multinomial everywhere",
                  f"toy MaskGIT prior 4x4x128 ({n_par / 1e6:.2g} M), {vq.m * vq.m} tokens, K={vq.K}, "
                  f"B={B} in batches of {batch}, {KNOBS['steps']} steps", "ours", "before",
                  res["median"]["ours"], res["median"]["before"], goal="— (reported)",
                  agreement="greedy: tokens identical; sampling: the same distribution, other draws",
                  repeats=repeats, times=res["times"])]
    notes = ["ours = MaskGITVQGM.sample with the profile's knobs; before = decode_before (this file), the sampler "
             "until 2026-12-07, seeded alike.",
             "torch.multinomial draws by exponential noise on every (position, id), single-threaded on the CPU; "
             "ours draws one uniform per masked position."]
    C.write_result(args, "maskgit_sampler", "Toy MaskGIT sampler", rows, notes=notes)
    return {"rows": rows}


if __name__ == "__main__":
    main()
