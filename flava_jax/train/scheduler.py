"""How much each stream and objective counts: the paper's sampling weights and its multimodal scheduler.

Streams are text (MLM), image (MIM) and pairs (ITM, MMM-text, MMM-image, global contrastive). The reference draws one
stream per micro-batch with probabilities p; every micro-step here holds all streams, with sub-batch sizes proportional
to p and each stream's loss scaled by p, which gives the same expected gradient, sum_s p_s grad L_s. The scheduler then
lowers stream and loss weights as validation losses stop improving (docs/reference.md#scheduler), with the reference's
intended semantics (docs/reference.md#scheduler-bugs): its changes reach training, and its state is checkpointed.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from flava_jax.common.settings import missing_keys

STREAM_OF = {"mlm": "text", "mim": "image", "itm": "pairs", "global_contrastive": "pairs", "mmm_image": "pairs",
             "mmm_text": "pairs"}
MULTIMODAL = ("itm", "global_contrastive", "mmm_image", "mmm_text")


def stream_weights(text_percent: float, image_percent: float, temperature: float | None = None) -> dict[str, float]:
    """The reference's sampling weights (docs/reference.md#sampling): raw weights [min(t, v), v, t] for (pairs, image,
    text) in percent of WiT, normalised, raised to the temperature (the reference forces 1 when t >= v and 0 otherwise,
    i.e. uniform), normalised again. Streams with no data are left out."""
    t, v = text_percent, image_percent
    raw = {"pairs": min(t, v), "image": v, "text": t}
    raw = {name: w for name, w in raw.items() if w > 0}
    if not raw:
        raise ValueError("no stream has data: both the text and the image budget are 0")
    if temperature is None:
        temperature = 1.0 if t >= v else 0.0
    total = sum(raw.values())
    tempered = {name: (w / total) ** temperature for name, w in raw.items()}
    total = sum(tempered.values())
    return {name: w / total for name, w in tempered.items()}


def micro_batch_sizes(weights: dict[str, float], micro_batch: int) -> dict[str, int]:
    """Examples of each stream in one micro-step, proportional to its weight (at least one)."""
    return {name: max(1, round(micro_batch * w)) for name, w in weights.items()}


class MultimodalScheduler:
    """Modality-specific early stopping (the reference's full-size-era monitor, docs/reference.md#scheduler).

    After each validation, an objective whose loss did not improve on its best (by more than `min_delta`) has its
    weight multiplied by `factor` (MLM and MIM: their stream's sampling weight; the multimodal objectives: their
    loss weight), and set to 0 once `patience` validations in a row have not improved. An improvement resets the
    count; nothing is revived. Training stops when MLM stops and the run is text-only or MMM-text's weight is
    below `mmm_text_floor`, or when every stream weight is 0; the pair stream stops when all four multimodal
    weights are 0.

    `stream_weights_act=False` reproduces what the reference's code did instead (docs/reference.md#scheduler-bugs): its
    stream weights change and decide when to stop, but the loader kept sampling with the initial ones.
    """

    def __init__(self, streams: dict[str, float], patience: dict[str, int], factor: float, min_delta: float,
                 mmm_text_floor: float, stream_weights_act: bool) -> None:
        self.factor, self.min_delta, self.mmm_text_floor = factor, min_delta, mmm_text_floor
        self.initial_streams, self.stream_weights_act = dict(streams), stream_weights_act
        objectives = [name for name, stream in STREAM_OF.items() if stream in streams]
        self.state: dict[str, Any] = {
            "streams": dict(streams),
            "losses": {name: 1.0 for name in objectives},
            "monitors": {name: {"best": math.inf, "wait": 0, "patience": patience[name]} for name in objectives},
            "stopped": False,
            "events": [],
        }

    # ------------------------------------------------------------------------------------------- weights

    @classmethod
    def from_config(cls, streams: dict[str, float], section: Any) -> MultimodalScheduler:
        """The scheduler `section` (config.scheduler) describes, for the initial stream weights `streams`."""
        objectives = [name for name, stream in STREAM_OF.items() if stream in streams]
        missing_keys(section.patience, "config.scheduler.patience", objectives)
        return cls(streams, dict(section.patience), section.factor, section.min_delta, section.mmm_text_floor,
                   section.stream_weights_act)
    def weights(self) -> dict[str, dict[str, float]]:
        """What the train step multiplies losses by: the normalised stream probabilities and the loss weights."""
        streams = self.state["streams"] if self.stream_weights_act else self.initial_streams
        total = sum(streams.values())
        return {"streams": {s: (w / total if total else 0.0) for s, w in streams.items()},
                "losses": dict(self.state["losses"])}

    @property
    def stopped(self) -> bool:
        return self.state["stopped"]

    # ------------------------------------------------------------------------------------------- update
    def _lower(self, name: str, to_zero: bool) -> None:
        if name in ("mlm", "mim"):
            stream = STREAM_OF[name]
            self.state["streams"][stream] = 0.0 if to_zero else self.state["streams"][stream] * self.factor
        else:
            self.state["losses"][name] = 0.0 if to_zero else self.state["losses"][name] * self.factor

    def update(self, step: int, val_losses: dict[str, float]) -> list[str]:
        """Apply one validation's losses; returns what changed, in words (also kept in the state)."""
        events = []
        for name, monitor in self.state["monitors"].items():
            if name not in val_losses or monitor["wait"] >= monitor["patience"]:
                continue  # not measured, or already stopped
            loss = val_losses[name]
            if loss < monitor["best"] - self.min_delta:
                monitor["best"], monitor["wait"] = loss, 0
                continue
            monitor["wait"] += 1
            stop = monitor["wait"] >= monitor["patience"]
            self._lower(name, stop)
            events.append(f"{name}: no improvement on {monitor['best']:.4f} ({monitor['wait']}/{monitor['patience']})"
                          + ("; stopped" if stop else f"; weight x{self.factor}"))
        losses, streams = self.state["losses"], self.state["streams"]
        monitors = self.state["monitors"]
        multimodal = [name for name in MULTIMODAL if name in losses]
        if multimodal and all(losses[name] == 0 for name in multimodal) and streams.get("pairs", 0) > 0:
            streams["pairs"] = 0.0
            events.append("pairs: every multimodal objective stopped; stream off")
        mlm_stopped = "mlm" in monitors and monitors["mlm"]["wait"] >= monitors["mlm"]["patience"]
        if mlm_stopped and ("pairs" not in streams or losses.get("mmm_text", 0.0) < self.mmm_text_floor):
            self.state["stopped"] = True
            events.append("training stops: MLM stopped improving")
        if all(w == 0 for w in streams.values()):
            self.state["stopped"] = True
            events.append("training stops: every stream is off")
        self.state["events"] += [f"step {step}: {e}" for e in events]
        return events

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (infinite bests as None) for the checkpoint."""
        state = copy.deepcopy(self.state)
        for monitor in state["monitors"].values():
            monitor["best"] = None if math.isinf(monitor["best"]) else monitor["best"]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = copy.deepcopy(state)
        for monitor in state["monitors"].values():
            monitor["best"] = math.inf if monitor["best"] is None else monitor["best"]
        if set(state["monitors"]) != set(self.state["monitors"]):
            raise ValueError(f"scheduler state monitors {sorted(state['monitors'])} differ from this run's "
                             f"{sorted(self.state['monitors'])}")
        self.state = state
