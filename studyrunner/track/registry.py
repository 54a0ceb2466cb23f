"""The best model, where an MLflow team looks for it: the best trial's weights logged to its run as
an MLflow PyTorch model (with a signature, an input example and the preprocessing it needs as
metadata: input size, resize, mean, std, class names, the config) and registered in the Model
Registry under the study's name with the alias ``best``, so ``models:/NAME@best`` resolves. A
later, better best moves the alias; registering the same trial again creates no new version."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studyrunner.config import config_from_dict, config_to_dict
from studyrunner.engine.checkpoint import Checkpoint
from studyrunner.errors import StudyrunnerError
from studyrunner.track.runs import quiet_mlflow

__all__ = ["ALIAS", "Registered", "register_best", "load_registered"]

ALIAS = "best"  # models:/NAME@best
MODEL_PATH = "model"  # the artifact folder of the trial's run that holds the MLflow model


@dataclass(frozen=True)
class Registered:
    name: str
    version: int
    run_id: str
    new: bool  # False: this trial was registered before, and only the alias (maybe) moved

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{ALIAS}"


def register_best(uri: str, name: str, run_id: str, checkpoint: Checkpoint, trial: int) -> Registered:
    """Register ``checkpoint`` (trial ``trial``'s best weights, its MLflow run ``run_id``) as
    ``name`` and point the alias ``best`` at it."""
    from mlflow.tracking import MlflowClient

    quiet_mlflow()
    client = MlflowClient(uri)
    known = _version_of_run(client, name, run_id)
    if known is None:
        _log_model(client, run_id, checkpoint)
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name, description=f"best model of the studyrunner study {name}")
        mv = client.create_model_version(
            name, f"runs:/{run_id}/{MODEL_PATH}", run_id=run_id, tags={"study": name, "trial": str(trial)}
        )
        version, new = int(mv.version), True
    else:
        version, new = known, False
    client.set_registered_model_alias(name, ALIAS, str(version))
    return Registered(name, version, run_id, new)


def _version_of_run(client: Any, name: str, run_id: str) -> int | None:
    """The registered version of ``name`` that came from ``run_id``, if there is one."""
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        return None
    found = [int(v.version) for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
    return min(found) if found else None


def _log_model(client: Any, run_id: str, checkpoint: Checkpoint) -> None:
    import mlflow.pytorch
    import numpy as np
    import torch
    import torchvision
    from mlflow.models import infer_signature

    size = checkpoint.config.data.image_size
    example = np.zeros((1, 3, size, size), dtype=np.float32)  # a normalised NCHW batch
    with torch.no_grad():
        out = checkpoint.model(torch.from_numpy(example)).numpy()
    metadata = {
        "classes": checkpoint.classes,
        "image_size": size,
        "resize": checkpoint.config.data.resize,
        "mean": checkpoint.mean,
        "std": checkpoint.std,
        "input": "float32 NCHW, RGB scaled to [0, 1], resized (shorter side) and centre-cropped, then (x - mean) / std",
        "config": config_to_dict(checkpoint.config),
    }
    logging.getLogger("mlflow.models.model").setLevel(logging.ERROR)  # no notes on the example's validation
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / MODEL_PATH
        mlflow.pytorch.save_model(
            checkpoint.model,
            str(folder),
            signature=infer_signature(example, out),
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__}", f"torchvision=={torchvision.__version__}"],  # no pip freeze
            metadata=metadata,
            serialization_format="pickle",  # an nn.Module again when loaded (pt2 gives an exported graph without eval())
        )
        client.log_artifacts(run_id, str(folder), MODEL_PATH)


def load_registered(model_uri: str, tracking_uri: str) -> Checkpoint:
    """A registered model (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) with its preprocessing.
    Read through a client of ``tracking_uri``: MLflow's global tracking URI (which its
    ``set_tracking_uri`` also exports to every child process) is left alone."""
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    quiet_mlflow()
    client = MlflowClient(tracking_uri)
    name, _, ref = model_uri.removeprefix("models:/").partition("@")
    try:
        if ref:
            mv = client.get_model_version_by_alias(name, ref)
        else:
            name, _, version = name.rpartition("/")
            mv = client.get_model_version(name, version)
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(str(mv.run_id), MODEL_PATH, tmp)
            meta = Model.load(local).metadata or {}
            model = mlflow.pytorch.load_model(local, map_location="cpu")
    except MlflowException as exc:
        raise StudyrunnerError(f"{model_uri}: not found in the model registry at {tracking_uri} ({exc.message})") from None
    if "classes" not in meta:
        raise StudyrunnerError(f"{model_uri}: not a studyrunner model (no preprocessing metadata)")
    cfg = config_from_dict(meta["config"])
    return Checkpoint(model.eval(), cfg, list(meta["classes"]), list(meta["mean"]), list(meta["std"]), 0)
