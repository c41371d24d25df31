"""The paper's method: token saliency and concept tokens, patch masking, Gumbel token selection, the information
extractors, the judging classifiers, and the checks beyond the paper (rival attributions, faithfulness curves,
sanity, bias, token search, intervention). Profile-free: tensors in, tensors out."""
