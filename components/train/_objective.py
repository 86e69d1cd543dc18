"""What a training step minimises (params.yaml `train.objective`), in the form the Ray worker's loop needs.

sft: next-token cross-entropy, token mean over the global batch. dpo: the DPO loss on preference pairs,
pair mean over the global batch, plus `train.dpo.sft_weight` x the chosen answers' token-mean NLL
(llmops/training/preference.py). Either way each rank divides its sums by the GLOBAL count of the step
(targets, pairs, chosen tokens: every rank holds the block list) times the world size, so FSDP/DDP gradient
averaging yields exactly the gradient of the global-batch loss, the same on 1 worker as on N.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def _to(batch: dict[str, Any], device) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


@dataclass(frozen=True)
class Objective:
    name: str  # sft | dpo
    beta: float = 0.1
    sft_weight: float = 0.0

    @classmethod
    def from_train(cls, tp: dict[str, Any]) -> Objective:
        dpo = tp.get("dpo") or {}
        return cls(tp.get("objective", "sft"), float(dpo.get("beta", 0.1)), float(dpo.get("sft_weight", 0.0)))

    @property
    def step_keys(self) -> tuple[str, ...]:
        """History keys of `step`'s stats (after the all-reduce they are global-batch values)."""
        return ("train_loss", "reward_accuracy", "reward_margin") if self.name == "dpo" else ("train_loss",)

    def step(self, model, step_blocks: Sequence, mine: Sequence, pad_id: int, device, world: int):
        """(loss to backward, float64 stats that sum over ranks to the global values of `step_keys`)."""
        import torch

        if self.name != "dpo":
            from llmops.training.data import collate, loss_sum

            global_targets = sum(b.n_targets for b in step_blocks)
            loss, _ = loss_sum(model, _to(collate(mine, pad_id), device))
            stats = loss.detach().to(torch.float64).reshape(1) / global_targets
            return loss * (world / global_targets), stats
        from llmops.training.preference import collate_pairs, pair_counts, preference_loss

        counts = [pair_counts(b) for b in step_blocks]
        pairs, chosen = sum(c[0] for c in counts), sum(c[1] for c in counts)
        t = preference_loss(model, _to(collate_pairs(mine, pad_id), device), self.beta)
        loss = t.dpo_sum * (world / pairs) + self.sft_weight * t.nll_sum * (world / chosen)
        value = t.dpo_sum.detach().double() / pairs + self.sft_weight * t.nll_sum.detach().double() / chosen
        stats = torch.stack([value, (t.margins > 0).sum().double() / pairs, t.margins.sum().double() / pairs])
        return loss, stats

    def eval_sums(self, model, chunk: Sequence, pad_id: int, device):
        """Sums over `chunk` (float64) that add up across batches and ranks; `eval_metrics` turns them into means."""
        import torch

        if self.name != "dpo":
            from llmops.training.data import collate, loss_sum

            loss, n = loss_sum(model, _to(collate(chunk, pad_id), device))
            return torch.tensor([loss.item(), n], dtype=torch.float64, device=device)
        from llmops.training.preference import collate_pairs, preference_loss

        t = preference_loss(model, _to(collate_pairs(chunk, pad_id), device), self.beta)
        return torch.tensor([t.dpo_sum.item(), t.nll_sum.item(), (t.margins > 0).sum().item(), t.margins.sum().item(),
                             (t.logp_margins > 0).sum().item(), t.pairs, t.chosen_tokens],
                            dtype=torch.float64, device=device)

    def eval_metrics(self, total) -> dict[str, float]:
        """val_loss (the objective itself); for dpo also the reward accuracy and margin (implicit reward
        beta * log(policy / reference), ties count as not preferred) and the share of pairs where the model
        itself finds the chosen answer more likely."""
        v = [float(x) for x in total.tolist()]
        if self.name != "dpo":
            return {"val_loss": v[0] / v[1] if v[1] > 0 else float("nan")}
        dpo, nll, correct, margin, logp_correct, pairs, chosen = v
        if pairs <= 0:
            return {"val_loss": float("nan")}
        return {"val_loss": dpo / pairs + self.sft_weight * nll / max(chosen, 1.0),
                "val_reward_accuracy": correct / pairs, "val_reward_margin": margin / pairs,
                "val_preference_accuracy": logp_correct / pairs}
