"""Quality figures and their plots, in numpy and scikit-learn: no torch, so
evaluate and select do not depend on the training code."""
