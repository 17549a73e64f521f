"""StarGAN models, losses, D/G steps, data reading, Horovod helpers, checkpoints, tracking."""
