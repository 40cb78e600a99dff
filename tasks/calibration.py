"""Temperature scaling (Guo et al. 2017): one scalar T > 0 divides the logits so
that softmax(logits / T) is calibrated. Fitted on the validation split; the
exported graph carries it, so served probabilities are calibrated."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tasks.metrics import expected_calibration_error, softmax


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """The T minimising the negative log-likelihood of softmax(logits / T).
    Optimised in log space so T stays positive."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp().item())


def calibrate(logits: np.ndarray, labels: np.ndarray, n_bins: int) -> dict:
    """Fit T on (validation) logits; keep it only if it does not worsen ECE on
    that same split, since NLL and ECE can disagree on small data."""
    before = expected_calibration_error(softmax(logits), labels, n_bins)
    temperature = fit_temperature(logits, labels)
    after = expected_calibration_error(softmax(logits / temperature), labels, n_bins)
    if after > before:
        temperature, after = 1.0, before
    return {"temperature": temperature, "val_ece_before": before, "val_ece_after": after}
