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
from rich import box
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


#: Below this width the vendor and collective-library columns are left out (``--json`` and
#: a wider terminal show them), so the table stays readable at 80 columns.
_WIDE = 100


def _table(chips: dict[str, ChipSpec], *, width: int) -> Table:
    wide = width >= _WIDE
    table = Table(title=f"Chip library ({len(chips)} chips)", title_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    columns = [("chip", "left"), *([("vendor", "left")] if wide else []),
               ("BF16 TF", "right"), ("conf.", "left"), ("GB", "right"), ("GB/s", "right"),
               ("link GB/s", "left"), *([("library", "left")] if wide else []),
               ("eff.", "right"), ("lowest", "left")]
    for header, justify in columns:
        table.add_column(header, justify=justify,  # type: ignore[arg-type]
                         no_wrap=header != "link GB/s", overflow="fold",
                         min_width=11 if header == "link GB/s" else None,
                         style="bold" if header == "chip" else None)
    for chip in chips.values():
        bf16 = chip.provenance.get("tflops_bf16")
        cells = {"chip": chip.name, "vendor": chip.vendor, "BF16 TF": f"{chip.tflops_bf16:g}",
                 "conf.": _styled(bf16.confidence if bf16 else "low"),
                 "GB": f"{chip.memory_gb:g}", "GB/s": f"{chip.memory_bw_gbs:g}",
                 "link GB/s": f"{chip.intra_node_link} {chip.intra_node_bw_gbs:g}",
                 "library": chip.collective_library, "eff.": f"{chip.compute_efficiency:.2f}",
                 "lowest": _styled(chip.lowest_confidence)}
        table.add_row(*(cells[h] for h, _ in columns))
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
    console.print(_table(chips, width=console.width))
    console.print("BF16 TF: dense peak TFLOPS (conf.: its confidence); GB, GB/s: memory and its "
                  "bandwidth; link: intra-node, per direction; lowest: the least certain "
                  "figure (100 columns add vendor and library). Sources per figure: "
                  "`autosplit chips --json`, docs/chips.md.")


def register(app: typer.Typer) -> None:
    """Add ``autosplit chips`` to the app."""
    app.command("chips")(_chips)
