"""The served model's answers for the site's images, asked over gRPC as any client asks
(``serving.client``): the model is never loaded here, so what is accepted is what is served."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.client import ServingClient

from pipelines.site.progress import Progress

BATCH = 16          # the model server's batching.config max_batch_size: one request, one batch


@dataclass(frozen=True)
class Served:
    version: int
    probability: np.ndarray
    threshold: float            # the model's own, from its signature's ``threshold`` output


def score(client: ServingClient, model: str, pngs: list[bytes], version: int | None = None,
          label: str | None = None) -> Served:
    """Every image's probability; every batch must come from the same version (a rollout in
    the middle would mix two models in one verdict)."""
    probabilities, thresholds, versions = [], [], set()
    progress = Progress(f"scoring with {model}", len(pngs))
    for start in range(0, len(pngs), BATCH):
        batch = pngs[start:start + BATCH]
        answer = client.predict_batch(model, batch, version=version, version_label=label)
        versions.add(answer.version)
        probabilities.append(np.asarray(answer.outputs["probability"], float).reshape(-1))
        thresholds.append(np.asarray(answer.outputs["threshold"], float).reshape(-1))
        progress.step(len(batch))
    if len(versions) != 1:
        raise RuntimeError(f"{model} changed version while the site's images were scored ({sorted(versions)}); "
                           "run again once the rollout is over")
    threshold = np.concatenate(thresholds)
    if np.ptp(threshold) > 1e-6:
        raise RuntimeError(f"{model} answered more than one threshold ({threshold.min():.4f} to {threshold.max():.4f})")
    return Served(versions.pop(), np.concatenate(probabilities), float(threshold[0]))
