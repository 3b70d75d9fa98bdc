"""`autosplit chips`: show the chip library the planner will use.

A plan is only as good as the figures behind it, so this command shows every chip with its
key numbers and the least certain of its sources, and can check a user's own chip folder
(``--dir``) before a search uses it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from autosplit.chips.library import load_chip_library
from autosplit.chips.spec import ChipSpec

__all__ = ["register", "chip_to_json"]

_CONFIDENCE_STYLE = {"measured": "bold green", "high": "green", "medium": "yellow",
                     "low": "red"}


def chip_to_json(chip: ChipSpec) -> dict[str, Any]:
    """A chip as plain JSON data, with its lowest confidence added."""
    data = dataclasses.asdict(chip)
    data["aliases"] = list(chip.aliases)
    data["lowest_confidence"] = chip.lowest_confidence
    return data


def _table(chips: dict[str, ChipSpec]) -> Table:
    table = Table(title=f"Chip library ({len(chips)} chips)", title_justify="left")
    table.add_column("chip", style="bold", no_wrap=True)
    table.add_column("vendor", no_wrap=True)
    table.add_column("BF16 TFLOPS", justify="right")
    table.add_column("BF16 conf.", no_wrap=True)
    table.add_column("mem GB", justify="right")
    table.add_column("mem GB/s", justify="right")
    table.add_column("intra-node link (GB/s/dir)", no_wrap=True)
    table.add_column("collectives", no_wrap=True)
    table.add_column("eff.", justify="right")
    table.add_column("lowest conf.", no_wrap=True)
    for chip in chips.values():
        conf = chip.lowest_confidence
        bf16 = chip.provenance.get("tflops_bf16")
        bf16_conf = bf16.confidence if bf16 else "low"
        table.add_row(
            chip.name,
            chip.vendor,
            f"{chip.tflops_bf16:g}",
            _styled(bf16_conf),
            f"{chip.memory_gb:g}",
            f"{chip.memory_bw_gbs:g}",
            f"{chip.intra_node_link} {chip.intra_node_bw_gbs:g}",
            chip.collective_library,
            f"{chip.compute_efficiency:.2f}",
            _styled(conf),
        )
    return table


def _styled(confidence: str) -> str:
    style = _CONFIDENCE_STYLE.get(confidence)
    return f"[{style}]{confidence}[/]" if style else confidence


def _chips(
    as_json: bool = typer.Option(False, "--json", help="Print the library as JSON."),
    dirs: list[Path] = typer.Option(  # noqa: B006 - typer reads the default, never mutates it
        [], "--dir", help="Extra directory of <chip>/chip.yaml folders (repeatable).",
    ),
) -> None:
    """List the chips the planner knows: figures, links, and how much to trust them."""
    chips = load_chip_library(extra_dirs=dirs)
    if as_json:
        typer.echo(json.dumps([chip_to_json(c) for c in chips.values()], indent=2))
        return
    console = Console()
    console.print(_table(chips))
    console.print("Figures are dense peaks; bandwidths are per direction. "
                  "Sources and confidence per figure: `autosplit chips --json`, docs/chips.md.")


def register(app: typer.Typer) -> None:
    """Add ``autosplit chips`` to the app."""
    app.command("chips")(_chips)
