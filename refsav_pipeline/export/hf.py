"""``refsav export hf``: a run as a Hugging Face dataset folder, with a card that says exactly
how it was made. Anyone can ``load_dataset`` the folder or upload it to the Hub as it is.

::

    DIR/
    ├── README.md                        the dataset card (export/hf_card.py)
    ├── data/{split}-NNNNN-of-MMMMM.parquet
    └── provenance/
        ├── row_settings.json            the settings the config fingerprint hashes
        └── prompts/{id}.v{N}.yaml       the prompt files the rows name

The splits are every export's: ``train`` is ``sa2va.train_rows`` (ok rows outside the benchmark
videos and chunks), ``benchmark`` is ``sa2va.benchmark_rows`` (the reviewed samples with their
final texts). With ``images="jpeg"`` each row carries the report's three images of it
(``row_images``), byte for byte. Everything is built in a hidden folder inside DIR and moved
into place at the end, so a failed export leaves DIR as it was.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.export.hf_card import write_card, write_provenance
from refsav_pipeline.export.hf_dataset import (
    BUILD_PREFIX,
    CARD_FILE,
    DATA_DIR,
    OWNED,
    PROVENANCE_DIR,
    SPLITS,
    HfOptions,
    SplitFiles,
    features,
    gather,
    write_split,
)

# ------------------------------------------------------------------------------------------------
# The folder
# ------------------------------------------------------------------------------------------------

@dataclass
class HfExport:
    dest: Path
    splits: list[SplitFiles]
    warnings: list[str]


def _install(tmp: Path, dest: Path) -> None:
    """Replace DIR's own entries with the new ones; anything else in DIR stays."""
    for name in OWNED:
        old = dest / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
        if (tmp / name).exists():
            (tmp / name).rename(old)


def export_hf(out_dir: str | Path, dest: str | Path, opts: HfOptions | None = None,
              render_config: PipelineConfig | None = None) -> HfExport:
    """Write the dataset folder ``dest`` from the run ``out_dir`` (see the module docstring).
    ``render_config``: how the images are drawn (default: the run's own config)."""
    inputs = gather(Path(out_dir), Path(dest), opts or HfOptions(), render_config)
    dest = inputs.dest
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f"{BUILD_PREFIX}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    warnings = list(inputs.warnings)
    try:
        (tmp / DATA_DIR).mkdir(parents=True)
        feats = features(inputs.opts.images)
        schema = feats.arrow_schema
        splits = [write_split(inputs, name, tmp / DATA_DIR, schema, warnings)
                  for name in SPLITS if name in inputs.splits]
        prompts = write_provenance(inputs, tmp / PROVENANCE_DIR, warnings)
        write_card(inputs, feats, splits, prompts, tmp / CARD_FILE)
        _install(tmp, dest)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return HfExport(dest=dest, splits=splits, warnings=warnings)
