"""The benchmark table as text: CSV for machines and baselines, Markdown for people.

CSV keeps every column at full precision (``autosplit bench --check`` reads it back);
Markdown keeps the columns a reader compares and formats them for reading: ``OOM`` where a
baseline does not fit in memory, ``–`` where it does not apply.
"""

from __future__ import annotations

import math

import pandas as pd

__all__ = ["MARKDOWN_COLUMNS", "format_cell", "to_csv", "to_markdown"]

#: (column, header, format) of the Markdown table.
MARKDOWN_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("name", "case", "{}"),
    ("devices", "devices", "{:d}"),
    ("chip_types", "types", "{:d}"),
    ("units", "units", "{:d}"),
    ("iteration_s", "iter s", "{:.4g}"),
    ("tokens_per_s", "tokens/s", "{:,.0f}"),
    ("mfu", "MFU", "{:.1%}"),
    ("search_s", "search s", "{:.2f}"),
    ("search_cpu_s", "search CPU s", "{:.2f}"),
    ("time_ratio", "÷ref time", "{:.2f}"),
    ("total_s", "ingest+search s", "{:.2f}"),
    ("peak_mem_mib", "peak MiB", "{:.1f}"),
    ("optimality_gap", "gap", "{:.2%}"),
    ("vs_uniform", "÷uniform", "{:.2f}×"),
    ("vs_uniform_all", "÷uniform all", "{:.2f}×"),
    ("vs_tflops", "÷TFLOPS", "{:.2f}×"),
    ("vs_single_type", "÷1 type", "{:.2f}×"),
    ("vs_brute_force", "÷brute force", "{:.4f}×"),
)


def to_csv(df: pd.DataFrame) -> str:
    """Full-precision CSV (``repr`` of floats round-trips exactly)."""
    return df.to_csv(index=False, float_format="%.17g", lineterminator="\n")


def format_cell(value: object, fmt: str) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "OOM" if fmt.endswith("×") else "∞"
    if fmt == "{:d}":
        return str(int(value))  # type: ignore[call-overload]
    return fmt.format(value)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of the columns people compare."""
    cols = [c for c in MARKDOWN_COLUMNS if c[0] in df.columns]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |",
             "|" + "|".join("---" if k == 0 else "---:" for k in range(len(cols))) + "|"]
    for _, row in df.iterrows():
        cells = [format_cell(row[c], f) for c, _, f in cols]
        if "error" in df.columns and isinstance(row["error"], str) and row["error"]:
            cells[0] += f" (no plan: {row['error'][:60]})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
