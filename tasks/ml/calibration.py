"""Temperature scaling (Guo et al. 2017): one scalar T > 0 divides the logits so
that softmax(logits / T) is calibrated. Fitted on the validation split; the
exported graph carries it, so served probabilities are calibrated."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tasks.evaluation.metrics import expected_calibration_error, sigmoid, softmax

# Where the NLL has no minimum, T is held in this range. A validation split the model gets entirely
# right rewards ever sharper probabilities (T -> 0: seen at 1e-4 on 900 pictures, every served
# probability 0 or 1, logits of 2e5 in the graph), which no test error could then correct.
TEMPERATURE_RANGE = (0.2, 20.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100, kind: str = "softmax") -> float:
    """The T minimising the negative log-likelihood of softmax(logits / T), or of
    sigmoid(logits / T) per label for multilabel (`kind="sigmoid"`).
    Optimised in log space so T stays positive."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.float64 if kind == "sigmoid" else torch.long)
    nll = F.binary_cross_entropy_with_logits if kind == "sigmoid" else F.cross_entropy
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nll(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(log_t.exp().item(), *TEMPERATURE_RANGE))


def _ece(logits: np.ndarray, labels: np.ndarray, n_bins: int, kind: str) -> float:
    if kind == "sigmoid":  # every label decision is a two-class prediction
        p = sigmoid(logits).ravel()
        return expected_calibration_error(np.column_stack([1 - p, p]), labels.ravel().astype(int), n_bins)
    return expected_calibration_error(softmax(logits), labels, n_bins)


def calibrate(logits: np.ndarray, labels: np.ndarray, n_bins: int, kind: str = "softmax") -> dict:
    """Fit T on (validation) logits; keep it only if it does not worsen ECE on
    that same split, since NLL and ECE can disagree on small data."""
    before = _ece(logits, labels, n_bins, kind)
    temperature = fit_temperature(logits, labels, kind=kind)
    after = _ece(logits / temperature, labels, n_bins, kind)
    if after > before:
        temperature, after = 1.0, before
    return {"temperature": temperature, "val_ece_before": before, "val_ece_after": after}
