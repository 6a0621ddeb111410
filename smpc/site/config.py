"""``parties/<site>.yaml``: a site's kit, its data and what it answers jobs with."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict

from smpc.config.federation import read_yaml_model
from smpc.config.spec import one_of
from smpc.errors import UserError
from smpc.net.http import WebConfig
from smpc.protocols.registry import PROTOCOLS
from smpc.site.policy import SitePolicy

ProtocolName = Annotated[str, AfterValidator(one_of(tuple(PROTOCOLS)))]


class SiteConfig(BaseModel):
    """``parties/<site>.yaml``: a site's kit and what it answers jobs with.

    - ``inputs``: which local source feeds which of a spec's inputs (``age:
      FILE.csv:age``; a fedavg model's arrays and ``num_examples``: ``FILE.npz:ARRAY``):
      the job's protocol computes the local statistics it shares from them
      (:func:`configured_inputs`);
    - ``data``: a data file the job's protocol computes its statistics from (sum's
      CSV, one-round fedavg's .npz, a GWAS's fileset prefix), or one per protocol
      (``data: {gwas: FILESET, fedavg: MODEL.npz}``); for the job's protocol it is
      used before ``inputs``;
    - ``trainer``: ``module:function`` or ``file.py:function`` called on every fedavg
      job (every round of multi-round training) with the job's global model and round
      index; it returns the local model and its number of examples
      (:mod:`smpc.protocols.fedavg.training`).
      ``trainer_args`` are passed to it as keyword arguments, and ``site=NAME`` when
      it takes a ``site`` argument;
    - ``out``: the folder this site writes its own results into (a GWAS PCA's
      ``<name>.eigenvec`` of its samples and their PC plot), which never leave it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kit: Path
    federation: Path | None = None
    inputs: dict[str, str] = {}
    data: Path | dict[ProtocolName, Path] | None = None
    trainer: str | None = None
    trainer_args: dict[str, Any] = {}
    out: Path | None = None  # where this site writes its own results (a GWAS's .eigenvec)
    state: Path | None = None  # where answered job ids are kept (default: next to the config)
    log_level: str = "info"
    policy: SitePolicy = SitePolicy()
    web: WebConfig | None = None  # the operator page (smpc.site.web); off unless given

    def data_for(self, protocol: str) -> Path | None:
        """The data file for a job of ``protocol`` (None: use ``inputs``)."""
        if isinstance(self.data, dict):
            return self.data.get(protocol)
        return self.data


def load_site_config(path: Path) -> SiteConfig:
    config = read_yaml_model(path, SiteConfig)
    base = Path(path).resolve().parent

    def resolve(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else base / p)

    inputs = {
        name: (src if Path(src.split(":")[0]).is_absolute() else str(base / src))
        for name, src in config.inputs.items()
    }
    if not (config.inputs or config.data or config.trainer):
        raise UserError(f"{path}: give inputs, data or trainer: what this site answers jobs with")
    trainer = config.trainer
    if trainer and trainer.rpartition(":")[0].endswith(".py"):
        module, _, function = trainer.rpartition(":")
        trainer = f"{module if Path(module).is_absolute() else base / module}:{function}"
    data_files = (
        {k: resolve(v) for k, v in config.data.items()}
        if isinstance(config.data, dict)
        else resolve(config.data)
    )
    return config.model_copy(
        update={
            "kit": resolve(config.kit),
            "federation": resolve(config.federation),
            "data": data_files,
            "trainer": trainer,
            "state": resolve(config.state) or base / f".{Path(path).stem}.answered",
            "inputs": inputs,
            "web": config.web.resolved(base) if config.web is not None else None,
            "out": resolve(config.out),
        }
    )
