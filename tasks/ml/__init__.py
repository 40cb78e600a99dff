"""PyTorch: the architectures, the training loop and its toolbox (losses,
optimisers and schedules, regularisation, stopping), distillation, pruning and
temperature scaling."""
