"""Production monitoring's building blocks: drift statistics, the training
reference, the prediction log and labels as frames, windows and state."""
