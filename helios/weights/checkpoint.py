"""Read-only view of a diffusers-format safetensors checkpoint (single file or sharded with an
index), handing out lazy slices so a rank reads only the bytes it asks for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from safetensors import safe_open

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


class CheckpointIndex:
    """Which file holds which tensor, for one transformer folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index_path = self.folder / INDEX_NAME
        single = self.folder / WEIGHTS_NAME
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"checkpoint index {index_path} is malformed: {exc!r}") from None
            self.weight_map: dict[str, str] = dict(weight_map)
        elif single.is_file():
            with safe_open(str(single), framework="pt") as f:
                self.weight_map = {name: WEIGHTS_NAME for name in f.keys()}
        else:
            raise ValueError(f"no {WEIGHTS_NAME} nor {INDEX_NAME} in {self.folder}")
        for file_name in sorted(set(self.weight_map.values())):
            if not (self.folder / file_name).is_file():
                raise ValueError(f"checkpoint file {file_name} named by the index is missing from {self.folder}")

    @property
    def names(self) -> list[str]:
        return sorted(self.weight_map)

    @property
    def files(self) -> list[Path]:
        return [self.folder / f for f in sorted(set(self.weight_map.values()))]

    def slices(self, names: set[str] | None = None) -> Iterator[tuple[str, Any]]:
        """(name, lazy slice) for each tensor (or only `names`), opening each file once."""
        by_file: dict[str, list[str]] = {}
        for name, file_name in self.weight_map.items():
            if names is None or name in names:
                by_file.setdefault(file_name, []).append(name)
        for file_name, file_names in sorted(by_file.items()):
            with safe_open(str(self.folder / file_name), framework="pt", device="cpu") as f:
                available = set(f.keys())
                for name in sorted(file_names):
                    if name not in available:
                        raise ValueError(f"tensor {name} is listed in the index but missing from {file_name}")
                    yield name, f.get_slice(name)
