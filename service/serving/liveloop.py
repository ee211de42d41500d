"""The closed loop: live traffic decides what serves.

1. **Canary.** An accepted variant does not serve at once: it runs in shadow on a sample of live
   requests (the original keeps answering) until ``shadow_min_samples`` agreements are in.
   At or above its live budget it is promoted (``slimserve_swaps_total{reason="canary"}``);
   below it minus the hysteresis it is dropped and marked. Until the window is full a decision
   needs a one-sided 95 % bound (``Window.bounds``: Wilson's interval for top-1 agreement) on
   the right side of that line; a full window decides on its mean.
2. **Watch.** While a variant serves, the original runs in shadow on a sample; when the
   window's agreement falls below the budget minus the hysteresis (the same rule) the original
   is swapped back (``reason="live_fidelity"``), the figures are logged, and the variant is
   marked.
3. **Recompress.** A live-fidelity rollback queues a new job calibrated on the reservoir of
   live requests, with pruning amounts below the rejected variant's (the marks), so the next
   variant is built on what the model really sees and does not repeat the same settings.
4. **Share.** With ``SLIMSERVE_VARIANT_CACHE`` a variant that serves is published to the
   fleet's store (``service.serving.fleet``): a replica that starts on the same key serves it
   at once, with no job, once the entry passes its checks here; a variant live traffic rolled
   back is withdrawn from it.

The live budget: a variant verified by cosine keeps its verified cosine budget, and one whose
report claims a neighbour recall keeps the profile's recall floor on the window's served
sentences too (``service.serving.shadow``: a claim measured on the engine's own sentences does
not bound recall on another register); classifiers use ``SLIMSERVE_LIVE_MIN_AGREEMENT``
(top-1 agreement with the original).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from compression.evaluation import kinds
from compression.profiles import get_profile
from service.serving import metrics
from service.serving.fleet import Fleet
from service.serving.registry import ORIGINAL
from service.serving.settings import Settings
from service.serving.shadow import ShadowEvaluator, Window
from service.serving.variants import VariantManager

log = logging.getLogger("slimserve.live")


def decision(window: Window, budget: float, slack: float) -> tuple[bool, bool]:
    """(holds, breaks): whether the window's main metric promotes a canary, and whether it
    drops a canary or rolls back a served variant, against ``budget`` less ``slack``.

    Before the window is full, only evidence decides. A variant holds once its mean meets the
    budget and its one-sided 95 % lower bound (``Window.bounds``) clears the line. It breaks once
    its upper bound falls under the line. In between it keeps being measured: a point estimate on
    about 50 samples would drop a variant that truly disagrees on 2 % of inputs about one time
    in fourteen (3 or more of 48, binomial). A full window decides on its mean.
    """
    line = budget - slack
    low, high = window.bounds()
    holds = window.mean >= budget and (low >= line or window.full)
    breaks = high < line or (window.full and window.mean < line)
    return holds, breaks


class LiveLoop:
    """Canary promotion, live rollback, recompression and the shared cache."""

    def __init__(
        self,
        settings: Settings,
        manager: VariantManager,
        shadow: ShadowEvaluator,
        fleet: Fleet | None = None,
    ):
        self.settings = settings
        self.manager = manager
        self.shadow = shadow
        self.fleet = fleet  # SLIMSERVE_VARIANT_CACHE: what serves here is shared
        self._lock = threading.Lock()
        manager.on_accepted = self.accepted
        shadow.on_window = self.on_window

    # ---- accepted variants -----------------------------------------------------------------

    def accepted(self, name: str, vid: str) -> None:
        """A job's accepted variant: a canary in shadow, or served at once (then shared)."""
        if not self.settings.canary or self.settings.shadow_fraction <= 0:
            self.manager.activate(name, vid, reason="compression")
            self._publish(name, vid)
            return
        self.shadow.canaries[name] = self.manager.load(name, vid)
        self.shadow.reset(name, vid)
        log.info("model %s: variant %s runs as a canary in shadow", name, vid)

    def on_window(self, name: str, vid: str, window: Window) -> None:
        """The shadow thread has a full-enough window for ``vid``: promote, keep or roll back."""
        budget = self.budget(name, vid, window.metric)
        value = window.mean
        floor = self.recall_floor(name, vid, window.metric)
        recall = window.recall if floor is not None else None
        metrics.series().live_budget.labels(name, vid, window.metric).set(budget)
        if floor is not None:
            metrics.series().live_budget.labels(name, vid, "neighbour_recall").set(floor)
        slack = self.settings.live_hysteresis
        holds, breaks = decision(window, budget, slack)
        # Recall needs more than 2 k distinct sentences in the window (shadow.recall_of); until
        # then (or for traffic that repeats a few sentences) the main metric decides alone.
        holds = holds and (recall is None or recall >= floor)
        breaks = breaks or (recall is not None and recall < floor - slack)
        canary = self.shadow.canaries.get(name)
        with self._lock:
            if canary is not None and canary.variant == vid:
                if holds:
                    del self.shadow.canaries[name]
                    log.info("model %s: canary %s promoted (%s %.4f >= %.4f over %d samples%s)",
                             name, vid, window.metric, value, budget, len(window.values),
                             "" if recall is None else f"; neighbour recall {recall:.4f}")  # fmt: skip
                    self.manager.activate(name, vid, reason="canary")
                    self._publish(name, vid)
                elif breaks:
                    # Mark first: whoever sees the canary gone may read the marks at once.
                    self._mark(name, vid, window, budget, "canary", floor)
                    del self.shadow.canaries[name]
                    if self.fleet is not None:
                        self.fleet.canary_dropped(name, vid)
                return
            served = self.manager.plane.runtime.models[name].active
            if served.variant == vid and breaks:
                self._mark(name, vid, window, budget, "rollback", floor)
                self.manager.activate(name, ORIGINAL, reason="live_fidelity")
                self._unpublish(name, vid)
                self.shadow.reset(name, vid)
                self._recompress(name)

    def budget(self, name: str, vid: str, metric: str) -> float:
        report = self.manager.load(name, vid).report or {}
        if report.get("metric") == metric and metric in ("cosine", *kinds.ANSWERED):
            return float(report.get("budget", self.settings.live_min_agreement))
        return self.settings.live_min_agreement

    def recall_floor(self, name: str, vid: str, metric: str) -> float | None:
        """The profile's neighbour-recall floor, for a cosine variant whose report claims a
        recall (verification measured it); None otherwise."""
        report = self.manager.load(name, vid).report or {}
        if metric != "cosine" or report.get("neighbour_recall") is None:
            return None
        try:
            profile = get_profile(self.manager.profile_path or self.manager.profile)
        except (OSError, ValueError, KeyError):
            return None
        return profile.min_neighbour_recall

    # ---- marks and recompression -----------------------------------------------------------

    def _marks_path(self, name: str) -> Path:
        return self.settings.home / "live" / name / "rejected.json"

    def marks(self, name: str) -> list[dict]:
        """Variants live traffic rejected, with their settings and figures."""
        try:
            return json.loads(self._marks_path(name).read_text())
        except (OSError, json.JSONDecodeError):
            return []

    def _mark(
        self,
        name: str,
        vid: str,
        window: Window,
        budget: float,
        when: str,
        floor: float | None = None,
    ) -> None:
        report = self.manager.load(name, vid).report or {}
        mark = {
            "variant": vid,
            "when": when,
            "ratio": report.get("ratio"),
            "allocation": report.get("allocation"),
            "precision": report.get("precision"),
            "budget": round(budget, 6),
            "live": window.summary(),
        }
        figures = f"{window.metric} {window.mean:.4f}, budget {budget:.4f}"
        if floor is not None:
            mark["recall_floor"] = floor
            recall = "n/a" if window.recall is None else f"{window.recall:.4f}"
            figures += f"; neighbour recall {recall}, floor {floor:.4f}"
        log.warning(
            "model %s: variant %s under its live budget (%s, over %d samples); "
            "%s, marked so the next job does not repeat it",
            name, vid, figures, len(window.values),
            "dropped as a canary" if when == "canary" else "rolled back to the original",
        )  # fmt: skip
        path = self._marks_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([*self.marks(name), mark], indent=2))

    def profile_update(self, name: str) -> dict:
        """The next job's profile overrides: only amounts below every rejected variant's."""
        bad = [m["ratio"] for m in self.marks(name) if m.get("ratio")]
        if not bad:
            return {}
        profile = get_profile(self.manager.profile_path or self.manager.profile)
        ratios = [r for r in profile.ratios if r < min(bad)]
        return {"ratios": ratios} if ratios else {"ratios": [round(min(bad) / 2, 3)]}

    def _recompress(self, name: str) -> None:
        if not self.manager.jobs_enabled:
            return
        try:
            job = self.manager.compress(name, live=True, profile_update=self.profile_update(name))
            log.info("model %s: recompressing on live traffic (job %s)", name, job.id)
        except Exception as err:  # e.g. too few live samples yet: the original serves meanwhile
            log.warning("model %s: no recompression after the rollback: %s", name, err)

    # ---- the shared store -------------------------------------------------------------------

    def _publish(self, name: str, vid: str) -> None:
        if self.fleet is not None:
            self.fleet.publish(name, vid)

    def _unpublish(self, name: str, vid: str) -> None:
        if self.fleet is not None:
            self.fleet.unpublish(name, vid)

    def view(self, name: str) -> dict[str, dict]:
        """Per variant: its live window, and whether it is a canary or was rejected."""
        live = self.shadow.view(name)
        canary = self.shadow.canaries.get(name)
        for mark in self.marks(name):
            live.setdefault(mark["variant"], {})["rejected_live"] = mark["when"]
        if canary is not None:
            live.setdefault(canary.variant, {})["canary"] = True
        return live
