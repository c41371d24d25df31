"""Training and inference plumbing: the resumable fit loop and its checkpoints, batched inference, torchrun."""
