"""The embedded toy world (ToyBirds) and the small models trained on it: the toy VQGM's tokenizer and prior, their
training, the build in taming's format, and the toy evaluators."""
