"""Training: the contrastive loss, the accelerate trainer, and checkpoints that survive kill -9."""
