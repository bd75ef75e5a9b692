"""What every judge trainer writes into its run folder, at each checkpoint and at the end: the
symbolic diversity E (``divcfg embedder train``, ``diversity_cli``), the audio E (``audio_cli``)
and the text–music alignment scorer (``divcfg scorer train``, ``alignment_cli``).

A checkpoint (every ``--ckpt-every`` steps) writes the model with its training state and
``finished: False``, and rewrites ``metrics.jsonl`` from the history that state carries. The end of
the run writes, in this order:

- the model, its config's extra holding ``data_dir``, ``training`` (below), ``eval`` (the held-out
  figures), ``finished: True``, ``cut_short`` and the provenance;
- ``metrics.jsonl``: one row a step, ``{"step", "train/loss"[, "train/pair_acc"]}``;
- ``eval.json``: ``{"training": training, **eval}``;
- ``DONE.json`` (``divcfg.stages.mark_finished``), last, with the few figures a summary needs.

``training`` is the run's settings (``base_info``) followed by the steps done, the wall and CPU
seconds of training (rounded to 0.1 s), ``cut_short``, the trainer's own figures and

    final_loss = mean(loss[-20:]),   final_pair_acc = mean(acc[-20:])

over the last ``FINAL_WINDOW`` = 20 steps. The pair accuracy (row and final figure) is recorded where
the history has one: the contrastive trainers (``contrastive.fit_contrastive``) keep ``acc``, the
CLIP-style scorer does not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

FINAL_WINDOW = 20   # steps averaged into final_loss / final_pair_acc


def metric_rows(hist: dict) -> list[dict]:
    """``metrics.jsonl``'s rows from a history (or training state) holding ``loss`` [and ``acc``]."""
    if "acc" not in hist:
        return [{"step": i + 1, "train/loss": loss} for i, loss in enumerate(hist["loss"])]
    return [{"step": i + 1, "train/loss": loss, "train/pair_acc": acc}
            for i, (loss, acc) in enumerate(zip(hist["loss"], hist["acc"]))]


@dataclass
class JudgeRun:
    """One judge trainer's run folder and what each write into it records.

    ``out``: the folder as the user gave it (printed as is, written as ``Path(out)``);
    ``save(path, model, *, training_state, extra)``: the model's own save function (bind a tokenizer
    with ``functools.partial``); ``stage``: the name ``DONE.json`` records; ``base_info``: the run's
    settings, first in ``training``; it holds ``steps_planned``."""
    out: str | os.PathLike
    save: Callable[..., object]
    stage: str
    data_dir: Path
    seed: int
    base_info: dict

    @property
    def folder(self) -> Path:
        return Path(self.out)

    def _extra(self, training: dict, **fields) -> dict:
        from divcfg.provenance import provenance
        return {"data_dir": str(self.data_dir), "training": training, **fields,
                "provenance": provenance(self.seed, data_dir=str(self.data_dir))}

    def on_checkpoint(self, model, state: dict) -> None:
        """The training loop's checkpoint callback: model, training state, metrics so far."""
        from divcfg.stages import write_jsonl_atomic
        self.save(self.folder, model, training_state=state,
                  extra=self._extra({**self.base_info, "steps": state["step"]}, finished=False))
        write_jsonl_atomic(self.folder / "metrics.jsonl", metric_rows(state))

    def training_info(self, hist: dict, figures: dict) -> dict:
        """``training``: ``base_info``, the loop's figures, the trainer's ``figures``, the final means."""
        info = {**self.base_info, "steps": hist["steps"], "train_seconds": round(hist["seconds"], 1),
                "train_cpu_seconds": round(hist["cpu_seconds"], 1), "cut_short": hist["cut_short"], **figures,
                "final_loss": float(np.mean(hist["loss"][-FINAL_WINDOW:]))}
        if "acc" in hist:
            info["final_pair_acc"] = float(np.mean(hist["acc"][-FINAL_WINDOW:]))
        return info

    def finish(self, model, hist: dict, res: dict, *, figures: dict, done_eval: dict, trained_on: str) -> dict:
        """Write the finished run (model, metrics, eval.json, DONE.json last) and print one line.

        ``hist``: the loop's history (steps, seconds, cpu_seconds, cut_short, loss[, acc],
        training_state); ``res``: the held-out figures; ``figures``: the trainer's own entries of
        ``training`` (e.g. data loading seconds, training set size); ``done_eval``: what
        ``DONE.json`` keeps of ``res``; ``trained_on``: the printed line's middle ("on 200 clips").
        Returns ``training``."""
        from divcfg.provenance import write_json_atomic
        from divcfg.stages import mark_finished, write_jsonl_atomic
        info = self.training_info(hist, figures)
        self.save(self.folder, model, training_state=hist["training_state"],
                  extra=self._extra(info, eval=res, finished=True, cut_short=hist["cut_short"]))
        write_jsonl_atomic(self.folder / "metrics.jsonl", metric_rows(hist))
        write_json_atomic(self.folder / "eval.json", {"training": info, **res})
        mark_finished(self.folder, self.stage, hist["steps"], self.base_info["steps_planned"], hist["cut_short"],
                      seed=self.seed, elapsed_s=hist["seconds"], eval=done_eval)
        print(f"trained {hist['steps']} steps in {hist['seconds']:.0f} s {trained_on} "
              f"(final loss {info['final_loss']:.3f}); wrote {self.out}")
        return info
