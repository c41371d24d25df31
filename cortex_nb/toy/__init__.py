"""The embedded toy world (ToyBirds) and the small models trained on it: the taming-family toy VQGM (tokenizer,
autoregressive prior, their training, the build in taming's format), the MaskGIT-family toy VQGM (maskgit,
maskgit_training), and the toy evaluators."""
