"""`eomae evaluate`: the evaluation stage's command."""

from __future__ import annotations

from rich.console import Console

from eomae.config import Command
from evaluation.run import EvalConfig, run_evaluation

console = Console(stderr=True)


class EvaluateCommand(EvalConfig, Command):
    """Evaluate a pretrained encoder (linear, kNN, fine-tune; every input subset) + report."""

    def cli_cmd(self) -> None:
        """Evaluate, then print the headline table and where the report is."""
        cfg = EvalConfig(**self.model_dump(include=set(EvalConfig.model_fields)))
        summary = run_evaluation(cfg, log=console.print)
        for row in summary["rows"]:
            value = row["metrics"][row["headline"]]
            console.print(
                f"{row['task']:>12} {row['protocol']:>12} {row['inputs']:>7} {row['init']:>10} "
                f"{row['label_fraction']:>5.0%} {row['headline']} {100 * value:.1f}"
            )
        console.print(f"report: {summary['report']} ({summary['elapsed_s']} s)")
