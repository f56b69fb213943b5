"""Training stack: data sets, networks, losses, the training loop, directions and metrics."""
