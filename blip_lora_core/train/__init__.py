"""Training: config, data, batches, augmentation, the loop, checkpoints, schedule, precision, metrics."""
