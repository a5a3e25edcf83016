"""The original's early-stopping rule, with one decision for all ranks.

At each validation a counter grows when the mean AUC is below the best so far and resets to 0
otherwise (a tie resets it); training stops when the counter exceeds the patience (10 for NIH and
VinBigData, 20 for COVID-19 and Shenzhen), i.e. after patience + 1 validations in a row below the
best. The original kept this state on rank 0 only, so the other ranks could hang; here rank 0
decides and broadcasts its decision.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from refers.engine.distributed import DistInfo, broadcast_object


@dataclass
class Decision:
    """What one validation means: save the best-AUC / best-loss checkpoints, stop training.

    ``auc`` is the mean AUC the decision was taken on (rank 0's).
    """

    auc: float
    new_best_auc: bool
    new_best_loss: bool
    stop: bool
    counter: int


@dataclass
class EarlyStopping:
    """State of the rule (saved in the resume checkpoint)."""

    patience: int
    best_auc: float = -math.inf  # the original started at 0, so a first AUC of 0 saved no checkpoint
    best_loss: float = math.inf
    counter: int = 0

    def update(self, mean_auc: float, loss: float) -> Decision:
        """Apply one validation's mean AUC (NaN counts as below the best) and loss."""
        auc = mean_auc if math.isfinite(mean_auc) else -math.inf
        self.counter = self.counter + 1 if auc < self.best_auc else 0
        new_best_auc = auc > self.best_auc
        if new_best_auc:
            self.best_auc = auc
        new_best_loss = math.isfinite(loss) and loss < self.best_loss
        if new_best_loss:
            self.best_loss = loss
        return Decision(mean_auc, new_best_auc, new_best_loss, self.counter > self.patience, self.counter)

    @property
    def stopped(self) -> bool:
        """The rule has ended the run (as the last decision said)."""
        return self.counter > self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.patience = int(state["patience"])
        self.best_auc, self.best_loss, self.counter = float(state["best_auc"]), float(state["best_loss"]), int(state["counter"])


def decide(stopper: EarlyStopping, mean_auc: float, loss: float, info: DistInfo) -> Decision:
    """Rank 0 updates its rule and every rank receives its decision (and copies its state)."""
    decision = stopper.update(mean_auc, loss) if info.is_main else None
    decision, state = broadcast_object((decision, stopper.state_dict()), info)
    stopper.load_state_dict(state)
    return decision
